"""Entry-point stubs of the trunk's subcommands (group ``rtmoe.commands``).

Standard library only: ``rtmoe --help`` lists these help lines without importing the
player, the runtime, the engines or torch. See :class:`rtmoe.command.LazyCommand`.
"""

from rtmoe.command import LazyCommand

play = LazyCommand(
    help="replay a recording (or 'demo') as an LSL EEG stream with an LSL marker stream",
    target="rtmoe.stream.player:command",
)
stream = LazyCommand(
    help="decode an LSL EEG stream live and publish decodes over ZeroMQ",
    target="rtmoe.runtime.cli:stream_command",
)
demo = LazyCommand(
    help="play the shipped demo recording through the live decoder and score it",
    target="rtmoe.runtime.cli:demo_command",
)
sys_info = LazyCommand(
    help="print versions of rtmoe and its libraries (liblsl, libzmq, CUDA), devices and engine",
    target="rtmoe.sysinfo:command",
)
view = LazyCommand(
    help="show a running stream or demo live in a web browser (127.0.0.1)",
    target="rtmoe.view.server:command",
)
config = LazyCommand(
    help="print the resolved config tree (defaults < --config FILE < --set)",
    target="rtmoe.config_show:command",
)
