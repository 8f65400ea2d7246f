"""One running SUMO: the process (or libsumo in this process), its TraCI connection and how it fails.

:class:`Sumo` starts SUMO with a command line, reloads it for the next episode, tells in one line
why it failed (a signal, its error message, a frozen process that no longer answers) and stops it.
libsumo runs one simulation per process; a second simulation uses TraCI.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import sumo
import sumolib
import traci
from traci.exceptions import FatalTraCIError, TraCIException

from ..config import CosimError

CONNECT_TIMEOUT_S = 60.0
# libsumo runs one simulation per process: the Sumo that holds it, if any.
_libsumo_holder: Sumo | None = None


def sumo_binary(name: str) -> str:
    # Not sumolib.checkBinary, which prefers a user's SUMO_HOME (maybe another version), and not
    # os.environ["SUMO_HOME"], which importing libsumo points at a directory without bin/.
    return os.path.join(sumo.SUMO_HOME, "bin", name)


def sumo_env() -> dict[str, str]:
    return dict(os.environ, SUMO_HOME=sumo.SUMO_HOME)


def error_line(text: str) -> str:
    """SUMO's first error message (``Error: ...`` and its indented location lines) as one line.

    Without one, the last line it printed (sumo-gui's display errors have no prefix), or ''.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("Error:")), None)
    if start is None:
        return lines[-1].strip() if lines else ""
    block = [lines[start]] + list(itertools.takewhile(lambda s: s.startswith(" "), lines[start + 1:]))
    return " ".join(s.strip() for s in block)



class Sumo:
    """A SUMO process behind TraCI, or libsumo in this process; ``api`` has TraCI's interface."""

    def __init__(self, label: str, gui: bool, want_libsumo: bool, log: Path, timeout_s: float | None = None):
        self.label = label
        self.gui = gui
        # TraCI: the longest wait for one answer (sumo.traci_timeout_s); none with the GUI, which may be paused.
        self.timeout_s = None if gui else timeout_s
        self.want_libsumo = want_libsumo and not gui
        self.log = log
        self.api: Any = None
        self.proc: subprocess.Popen | None = None
        # What SUMO failing looks like: TraCI's exceptions, a dropped socket, (later) libsumo's exceptions.
        self.errors: tuple[type[BaseException], ...] = (FatalTraCIError, TraCIException, ConnectionError)

    def load(self, argv: list[str]) -> None:
        """Start SUMO with ``argv``, or reload the running one; a map SUMO rejects raises CosimError."""
        if self.api is not None:
            try:
                self.api.load(argv)
                return
            except self.errors:
                self.close()
        if self.want_libsumo and self._claim_libsumo():
            self._start_libsumo(argv)
        else:
            self._start_traci(argv)

    def _claim_libsumo(self) -> bool:
        global _libsumo_holder
        import libsumo  # only here: importing it rewrites os.environ["SUMO_HOME"]

        if _libsumo_holder is None and not libsumo.isLoaded():
            _libsumo_holder = self
            self.errors = (*self.errors, libsumo.FatalTraCIError, libsumo.TraCIException)
            return True
        warnings.warn(f"libsumo already runs a simulation in this process; SUMO '{self.label}' uses TraCI",
                      RuntimeWarning, stacklevel=5)
        self.want_libsumo = False
        return False

    def _start_libsumo(self, argv: list[str]) -> None:
        import libsumo

        self.api = libsumo  # a failed start leaves libsumo loaded: close() must close it
        try:
            libsumo.start([sumo_binary("sumo"), *argv])
        except self.errors as exc:
            self.close()
            # libsumo printed SUMO's message to the terminal: ask the binary for it once more, 0 s long.
            check = list(argv)
            check[check.index("--end") + 1] = "0"
            done = subprocess.run([sumo_binary("sumo"), *check], capture_output=True, text=True, env=sumo_env())
            message = error_line(done.stderr) or one_line(exc)
            raise CosimError(f"SUMO could not load {argv_map(argv)}: {message}") from None

    def _start_traci(self, argv: list[str]) -> None:
        if traci.connection.has(self.label):
            raise CosimError(f"a TraCI connection labelled '{self.label}' is already open")
        binary = sumo_binary("sumo-gui" if self.gui else "sumo")
        port = sumolib.miscutils.getFreeSocketPort()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([binary, *argv, "--remote-port", str(port)], stdout=subprocess.DEVNULL,
                                         stderr=log, env=sumo_env())
        # traci.start sleeps 1 s after the first refused connection; poll every 5 ms instead.
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                self.api = traci.connection.Connection("localhost", port, self.proc, None, False, self.label)
                if self.timeout_s is not None:  # a frozen SUMO: recv times out, traci drops the connection
                    self.api._socket.settimeout(self.timeout_s)
                return
            except OSError:
                if self.proc.poll() is not None:
                    message = error_line(self.log.read_text()) or f"exit status {self.proc.returncode}"
                    self.close()
                    raise CosimError(f"SUMO could not load {argv_map(argv)}: {message}") from None
                if time.monotonic() > deadline:
                    self.close()
                    raise CosimError(f"{binary} did not accept a TraCI connection within "
                                     f"{CONNECT_TIMEOUT_S:g} s") from None
                time.sleep(0.005)

    def failure(self, exc: BaseException) -> str:
        """Why SUMO failed, as one line: killed by a signal, its error message, or its exit status.
        (Not merely its last line of output: sumo-gui prints unrelated warnings there.)"""
        if self.proc is None:
            return one_line(exc)
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        binary = "sumo-gui" if self.gui else "sumo"
        if code is None and self.timeout_s is not None and "closed by SUMO" in str(exc):
            # The connection dropped while SUMO runs on: it did not answer within the timeout (stopped, stuck).
            self.proc.kill()
            return (f"{binary} (pid {self.proc.pid}) did not answer TraCI within {self.timeout_s:g} s, stopped or "
                    f"stuck; it was ended (sumo.traci_timeout_s sets the wait)")
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return f"{binary} died (killed by {sig})"
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        said = error_line(text) if "Error:" in text else ""
        if said:
            return said
        if code is not None:
            return f"{binary} exited with status {code}" + (" (it was closed)" if self.gui and code == 0 else "")
        return one_line(exc)

    def close(self) -> None:
        """Stop SUMO; harmless when it is stopped already or died."""
        global _libsumo_holder
        import struct
        api, proc = self.api, self.proc
        self.api = self.proc = None
        try:
            # Closing a connection whose SUMO died fails once, dropping the socket; the second
            # attempt then only unregisters the TraCI label.
            sock = getattr(api, "_socket", None) if proc is not None else None
            if sock is not None:  # a frozen SUMO, or an exchange a Ctrl-C cut: do not wait long for its goodbye
                try:
                    sock.settimeout(min(self.timeout_s or 5.0, 5.0))
                except OSError:
                    pass
            for _ in range(2 if api is not None else 0):
                try:
                    api.close(False) if proc is not None else api.close()
                    break
                except (*self.errors, OSError, struct.error, ValueError, IndexError):  # type: ignore[misc]  # a cut exchange: garbage
                    if proc is not None and proc.poll() is None:
                        proc.kill()
        finally:
            if proc is not None:
                if api is None:  # never connected: nothing will tell it to quit
                    proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if _libsumo_holder is self:
                _libsumo_holder = None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def argv_map(argv: Sequence[str]) -> str:
    """The map files named in a SUMO command line, for messages."""
    names = [v for k, v in zip(argv, argv[1:]) if k in ("-c", "-n", "-r", "--route-files")]
    return ", ".join(names) or " ".join(argv)

