"""The ``tandem`` command line. Each command imports its tier only when it runs, so
``tandem score`` never loads torch and ``tandem generate`` never loads the scorer."""
