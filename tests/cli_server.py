"""Run `train` and `evaluate` as new processes forked from one that has already imported them (TensorFlow, Keras):
each command is still a process of its own, with its own arguments, environment, working folder, output files and
exit status, run through the same entry point as the installed script; only the ~4 s of CPU that importing
TensorFlow costs each of them is paid once per test process, not per command. (build-aug and inspect-aug import in
under a second and start as plain processes: a build's pool forked from a process holding TensorFlow starts slower.)

    server = CliServer.start()
    result = server.run(["train", "--store", ...], env, cwd, timeout)   # a subprocess.CompletedProcess

A command whose environment changes what those imports read (KERAS_BACKEND, KERAS_HOME, TF_*, ...) cannot share
them: CliServer.can_run says so, and run_cli starts it as a plain process instead. Processes a test signals
(Ctrl-C, kill -9) are started with subprocess.Popen as before.

The server side (python tests/cli_server.py) reads one JSON request a line on stdin, forks, and answers two JSON lines
on stdout: {"pid": ...} at once, {"returncode": ...} when the command has ended (-N for a signal, as subprocess's).
It ends when its stdin closes, that is with the test process that started it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

COMMANDS = ("train", "evaluate")
# read once, when the modules are imported: a command that sets them otherwise runs as a plain process
IMPORT_TIME_PREFIXES = ("KERAS_", "TF_", "CUDA_", "XLA_", "JAX_", "PYTHON", "OMP_", "MKL_", "OPENBLAS_", "LD_", "TORCH")
IMPORT_TIME_NAMES = ("HOME", "PATH", "TMPDIR")
# set in the test process by its own imports (TensorFlow, OpenCV) after the server started: a difference in these
# counts only where the command's own env= gives them
SET_BY_IMPORTS = ("TF_CPP_MIN_LOG_LEVEL", "LD_LIBRARY_PATH")


def import_time_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES}


class CliServer:
    def __init__(self, process: subprocess.Popen, env: dict[str, str]):
        self.process, self.env = process, env
        self.lock = threading.Lock()

    @classmethod
    def start(cls) -> CliServer:
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
        process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        return cls(process, env)

    def can_run(self, args: tuple[str, ...], env: dict[str, str], given: dict[str, str], kwargs: dict) -> bool:
        """env: the command's whole environment; given: what the test set for it (env=)."""
        drifted = {k: given[k] for k in SET_BY_IMPORTS if k in given}
        ours = {k: v for k, v in import_time_environment(env).items() if k not in SET_BY_IMPORTS}
        theirs = {k: v for k, v in import_time_environment(self.env).items() if k not in SET_BY_IMPORTS}
        return (
            args[0] in COMMANDS
            and not set(kwargs) - {"cwd", "timeout"}
            and ours == theirs
            and all(self.env.get(k) == v for k, v in drifted.items())
            and self.process.poll() is None
            and not self.lock.locked()  # another thread's command is running here: that one runs as a plain process
        )

    def run(self, args: tuple[str, ...], env: dict[str, str], cwd=None, timeout: float | None = None):
        with self.lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {
                "argv": list(args),
                "env": env,
                "cwd": str(cwd or os.getcwd()),
                "stdout": str(out),
                "stderr": str(err),
            }
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = json.loads(self.process.stdout.readline())["pid"]
            if not self.wait_readable(timeout):
                os.kill(pid, signal.SIGKILL)
                json.loads(self.process.stdout.readline())
                raise subprocess.TimeoutExpired(list(args), timeout)
            code = json.loads(self.process.stdout.readline())["returncode"]
            read = lambda path: path.read_bytes().decode(errors="replace")  # noqa: E731
            return subprocess.CompletedProcess(list(args), code, read(out), read(err))

    def wait_readable(self, timeout: float | None) -> bool:
        return bool(select.select([self.process.stdout], [], [], timeout)[0])


# -- the server process -------------------------------------------------------------------------------


def entry_points() -> dict:
    from importlib.metadata import entry_points as installed

    return {ep.name: ep.load() for ep in installed(group="console_scripts") if ep.name in COMMANDS}


def run_child(request: dict, main) -> None:
    """In the forked process: become the command the request describes, then run it; never returns."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(request["cwd"])
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the server's was its request pipe)
        sys.argv = [request["argv"][0], *request["argv"][1:]]
        main()  # the commands end through os._exit (augzarr.cli_support.end_process)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as train and evaluate set it before they import TensorFlow
    mains = entry_points()
    import keras  # noqa: F401  the imports every command would otherwise pay for
    import tensorflow  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request, mains[request["argv"][0]])
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    serve()
