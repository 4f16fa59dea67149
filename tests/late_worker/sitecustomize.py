"""Start-up hook for the late-worker tests: one worker slot arrives after the search ended.

A directory holding this file is put first on ``PYTHONPATH`` of a search's processes; Python
imports ``sitecustomize`` at start-up. The process whose ``KERASTUNER_TUNER_ID`` equals
``NASFLOW_TEST_LATE_TUNER`` waits until nothing listens on the oracle port any more (the chief
has exited), as a worker does whose node came up late or whose pod was pending while the
other workers ran every trial. Every other process starts as usual.
"""

import os
import socket
import time

_late = os.environ.get("NASFLOW_TEST_LATE_TUNER")
if _late and os.environ.get("KERASTUNER_TUNER_ID") == _late:
    _address = (os.environ.get("KERASTUNER_ORACLE_IP", "127.0.0.1"), int(os.environ["KERASTUNER_ORACLE_PORT"]))
    _deadline = time.monotonic() + 600
    while time.monotonic() < _deadline:
        try:
            socket.create_connection(_address, timeout=1).close()
        except OSError:
            break
        time.sleep(0.2)
