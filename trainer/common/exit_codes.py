"""The exit codes a stopped run ends with, as a shell reports a program ended by the signal.

Schedulers and launch/ read them: 143 is what a job killed by SIGTERM returns, so schedulers
restart it as they would any preempted job (this one has saved its steps first); 130, a run
stopped from the keyboard, which schedulers and launchers do not restart.
"""

import signal

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT
