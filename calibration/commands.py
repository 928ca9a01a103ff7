"""Entry-point stubs of calibration/'s subcommands (group ``rtmoe.commands``).

Standard library only: ``rtmoe --help`` lists these help lines without importing the
recorder, the fitting code or torch. See :class:`rtmoe.command.LazyCommand`.
"""

from rtmoe.command import LazyCommand

calibrate = LazyCommand(
    help="record cue-locked trials (LSL or a file), check them and fit a subject profile",
    target="rtmoe.calibration.cli:calibrate_command",
)
profiles = LazyCommand(
    help="list or remove subject profiles (rtmoe calibrate writes them)",
    target="rtmoe.calibration.cli:profiles_command",
)
