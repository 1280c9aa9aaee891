"""Memory of a benchmark run: the whole process tree's, not only the driver's."""

from __future__ import annotations


class TreeMemory:
    """The peak of the summed resident memory of this process and all its descendants
    (on Ray: the GCS, the raylet and every actor's worker process), sampled every
    ``interval`` seconds while the run lasts. Pages shared between processes (the object
    store, imported libraries) count once per process that maps them: an upper bound."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that ended between the listing and the reading
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20
