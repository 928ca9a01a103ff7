"""Scripts that build shipped artifacts from the development data; run each with -m."""
