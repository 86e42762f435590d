"""What a command changes process-wide, owned by one object: ``CommandProcess``.

A process that runs one command (the CLI's, a server's, a worker's, a Ray actor's) is set up for that job: its log
records mask the keys it holds, DSPy's warnings stay off the console unless ``-v``, what its imports built is
frozen out of the garbage collector's way, and DSPy keeps no LM history or trace. Entering a ``CommandProcess``
makes those changes and leaving it puts back what it found (a ``ProcessState``), so a command run in-process (a
test calling ``fusion_dspy.cli.main``) leaves nothing behind. A library user who never runs a command gets none
of it.

Keys: ``fusion_dspy.backends.secrets.hold`` adds keys to ``HELD``, the mask of every results and errors file
(``ResultsLog``) and of a command's log lines and error line. Inside a command they are held until it is left;
outside one, for the life of the process, so a library's own batch files are masked too.
"""

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import dspy

from fusion_dspy.backends.secrets import HELD, Redactor, masked_records
from fusion_dspy.errors import FusionDSPyError

SERVER_YOUNG_OBJECTS = 20_000  # a server's young-generation threshold: CommandProcess.collect_young_less_often


@dataclass(frozen=True)
class ProcessState:
    """What a command changes process-wide, as it is at one moment: ``ProcessState.now()``, later ``restore()``.

    Example:
        >>> found = ProcessState.now()
        >>> CommandProcess().enter().keep_no_history()     # a worker's set-up: for the rest of the process
        >>> found.restore()                                # ... unless put back
        >>> dspy.settings.disable_history, gc.get_freeze_count()
        (False, 0)
    """

    record_factory: Callable[..., logging.LogRecord]
    root_handlers: tuple[logging.Handler, ...]
    root_level: int
    dspy_handler_levels: tuple[tuple[logging.Handler, int], ...]
    gc_enabled: bool
    gc_frozen: bool
    gc_threshold: tuple[int, ...]
    disable_history: bool
    trace: Any
    held: list[str]
    commands: int  # command processes entered

    @classmethod
    def now(cls) -> "ProcessState":
        root = logging.getLogger()
        return cls(record_factory=logging.getLogRecordFactory(), root_handlers=tuple(root.handlers),
                   root_level=root.level,
                   dspy_handler_levels=tuple((h, h.level) for h in logging.getLogger("dspy").handlers),
                   gc_enabled=gc.isenabled(), gc_frozen=gc.get_freeze_count() > 0, gc_threshold=gc.get_threshold(),
                   disable_history=dspy.settings.disable_history, trace=dspy.settings.trace, held=HELD.secrets,
                   commands=len(CommandProcess.active))  # fmt: skip

    def restore(self, unfreeze: bool = True) -> None:
        """Put everything back as it was: the keys held since are released, the log handlers added since removed.

        Args:
            unfreeze: Unfreeze what was frozen since; ``False`` keeps it frozen (the process is about to end).
        """
        del CommandProcess.active[self.commands :]
        HELD.reset(self.held)
        logging.setLogRecordFactory(self.record_factory)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h not in self.root_handlers]:
            root.removeHandler(handler)
        root.setLevel(self.root_level)
        for handler, level in self.dspy_handler_levels:
            handler.setLevel(level)
        if dspy.settings.disable_history != self.disable_history or dspy.settings.trace is not self.trace:
            dspy.configure(disable_history=self.disable_history, trace=self.trace)
        if unfreeze and not self.gc_frozen and gc.get_freeze_count():
            gc.unfreeze()
        (gc.enable if self.gc_enabled else gc.disable)()
        gc.set_threshold(*self.gc_threshold)


class CommandProcess:
    """The process-wide set-up of a process that runs a command: made on entering, put back on leaving.

    Entering sets up logging (``verbose``), masks the keys ``HELD`` holds in every log record, and freezes what the
    imports built; ``keep_no_history`` and ``mask_logs`` change more while it is entered.
    Leaving restores what entering found, including the keys held meanwhile (``hold``). Entering again, or another
    one inside it, is safe: each leaving restores what its entering found.

    Args:
        verbose: Log ``INFO`` and DSPy's warnings to the console (``-v``); ``False``: errors only, DSPy's warnings
            off the console; ``None``: leave logging's set-up alone (a server's, whose logs uvicorn sets up).
        ends_process: The process ends with the command (the ``fusion-dspy`` program): what was frozen stays
            frozen when it is left, so the interpreter's exit does not walk it (~1 s, see ``_freeze_imports``).

    Example:
        >>> with CommandProcess() as command:
        ...     command.keep_no_history()
        ...     dspy.settings.disable_history, gc.get_freeze_count() > 0
        (True, True)
        >>> dspy.settings.disable_history, gc.get_freeze_count()
        (False, 0)
    """

    active: ClassVar[list["CommandProcess"]] = []  # entered and not left, innermost last

    def __init__(self, verbose: bool | None = False, ends_process: bool = False):
        self.verbose, self.ends_process = verbose, ends_process
        self._found: list[ProcessState] = []

    @classmethod
    def current(cls) -> "CommandProcess":
        """The command process entered last and not left yet."""
        if not cls.active:
            raise FusionDSPyError("No command process is active: run the command inside "
                                  "`with fusion_dspy.process.CommandProcess(): ...`.")  # fmt: skip
        return cls.active[-1]

    @property
    def mask(self) -> Redactor:
        """The keys held, as a ``Redactor``: ``command.mask(text)`` is ``text`` with each of them masked."""
        return HELD

    def __enter__(self) -> "CommandProcess":
        self._found.append(ProcessState.now())
        try:
            if self.verbose is not None:
                logging.basicConfig(level=logging.INFO if self.verbose else logging.ERROR,
                                    format="%(levelname)s %(message)s")  # fmt: skip
            self.mask_logs(HELD)  # no held key in a log line, whatever an upstream error echoes
            if self.verbose is False:
                _quiet_dspy_logs()
            _freeze_imports()
        except BaseException:
            self._found.pop().restore()
            raise
        CommandProcess.active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._found.pop().restore(unfreeze=not self.ends_process)

    def enter(self) -> "CommandProcess":
        """Enter for the rest of the process, never to leave: a worker's or a Ray actor's process is the job's."""
        return self.__enter__()

    def keep_no_history(self) -> None:
        """Keep no LM call history and no trace until this is left. By default DSPy keeps every request and response
        (up to 10,000 per LM and module) and every prediction with its inputs (``settings.trace``, up to 10,000),
        which grew the memory of a long batch by ~7 MB per 1,000 prompts (benchmarks/soak.py). Nothing in a batch
        or a server reads them; DSPy's optimizers open their own ``dspy.context(trace=[])`` where they record one.
        """
        dspy.configure(disable_history=True, trace=None)

    def freeze_start_up(self) -> None:
        """Freeze what the start-up built since entering (``gc.freeze``): a server's modules, backends, programs and
        app live as long as its process, and each full collection walked them all; at N = 3, freezing them took
        the server's CPU per request to 0.85 of what it was sequentially and 0.96 at 64 in flight
        (``benchmarks/serve.py --against``). Leaving unfreezes, as for the imports.
        """
        gc.freeze()

    def collect_young_less_often(self, objects: int = SERVER_YOUNG_OBJECTS) -> None:
        """Collect the youngest generation once ``objects`` more objects were made than freed, not CPython's 700
        (``gc.set_threshold``), until this is left. With 64 requests in flight, each young collection walked every
        live object of all of them again: at 20,000, the server's CPU per fused request at 64 in flight was 0.91 of
        what it was, in two side-by-side runs, and unchanged sequentially (1.04, within the noise of one run).
        The collections still run, less often; a reference cycle is freed a little later.
        """
        _, middle, old = gc.get_threshold()
        gc.set_threshold(objects, middle, old)

    def mask_logs(self, redact: Redactor) -> None:
        """Mask the secrets ``redact`` knows, including those it learns later, in every log record made until this
        is left (a server's own key, say, which ``HELD`` does not hold)."""
        if getattr(logging.getLogRecordFactory(), "masks", None) is not redact:  # else in place already
            logging.setLogRecordFactory(masked_records(redact, logging.getLogRecordFactory()))


def _quiet_dspy_logs() -> None:
    """DSPy's warnings (e.g. one per reply cut short, many with a small model) off the console: the results say
    enough. Its handlers are quieted, not its logger, so the records are still made and
    ``fusion_dspy.core.truncation`` still marks the cut replies."""
    for handler in logging.getLogger("dspy").handlers:
        handler.setLevel(logging.ERROR)


def _freeze_imports() -> None:
    """Freeze every object alive (``gc.freeze``), so that no later collection walks the modules, classes and tables
    the imports built; nothing if something is frozen already (an outer command's set-up).

    litellm is not imported here: only a model on the litellm engine needs it, and ``fusion_dspy._litellm`` imports
    it then, with the collector off, and freezes what it built (its import builds some 400,000 objects; measured on
    2 cores, the collections during it took ~0.9 s of a command's start, and the full collection at the
    interpreter's exit ~1.2 s more, ``benchmarks/workers.py``). Objects made afterwards are collected as usual. A
    ``CommandProcess`` calls it and unfreezes when left (``gc.unfreeze``); one inside another freezes nothing
    more, as it could not unfreeze that alone.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
