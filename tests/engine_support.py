"""What the engine tests share (tests/test_ray_engine.py, tests/test_workers.py): stub replies, config files and
record views, so the Ray actors and the worker processes are held to the same records as one process."""

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


def reply(body: dict) -> str:
    """A teacher drafts, the fusor fuses; the 'poison' prompt gets an answer no adapter can parse."""
    outputs = body["messages"][0]["content"].split("Your output fields are:")[-1].split("All interactions")[0]
    if "`comparison`" in outputs:
        return "[[ ## comparison ## ]]\nc\n\n[[ ## response ## ]]\nfused\n\n[[ ## completed ## ]]"
    if "poison" in body["messages"][-1]["content"]:
        return "no fields here"
    return f"[[ ## response ## ]]\ndraft by {body['model']}\n\n[[ ## completed ## ]]"


def qa_reply(body: dict) -> str:
    """Odd questions are answered wrongly by the generator; the fusor always answers 42."""
    outputs = body["messages"][0]["content"].split("Your output fields are:")[-1].split("All interactions")[0]
    if "`comparison`" in outputs:
        return "[[ ## comparison ## ]]\nc\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"
    number = int(body["messages"][-1]["content"].split("question ")[-1].split()[0])
    return f"[[ ## answer ## ]]\n{42 if number % 2 == 0 else 41}\n\n[[ ## completed ## ]]"


REPO = Path(__file__).resolve().parents[1]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def by_id(path: Path) -> dict[str, dict]:
    records = lines(path)
    assert len({str(r["id"]) for r in records}) == len(records), "no id is written twice"
    return {str(r["id"]): r for r in records}


WITHOUT_LITELLM = REPO / "tests" / "without_litellm"  # its sitecustomize records each import of litellm, and fails it
IMPORTS = "FUSION_TEST_LITELLM_IMPORTS"  # the folder where it records them


@contextlib.contextmanager
def ray_environment(records: Path) -> Iterator[None]:
    """What the Ray cases and the processes they start run with, while the context lasts: the repository on
    PYTHONPATH (Ray's workers import the test task, tests.scripted_search, as a user's workers import theirs) and no
    litellm (``litellm_importers()`` lists the processes that tried, from their records in the folder ``records``)."""
    before = {name: os.environ.get(name) for name in ("PYTHONPATH", IMPORTS)}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), before["PYTHONPATH"]]))
    os.environ.update(litellm_free(records))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_SHARED: dict[str, Path] = {}  # the records folder of the Ray instance shared_ray started, while it is up


def shared_ray() -> tuple[Any, Path]:
    """This test process's local Ray instance (2 CPUs, no dashboard), started if none is up, and the folder where
    its processes record an import of litellm: they run in ``ray_environment`` of that folder (its raylet starts
    them with the environment it was started in). ``stop_shared_ray`` ends it."""
    import ray

    if not ray.is_initialized():
        _SHARED["records"] = Path(tempfile.mkdtemp(prefix="fusion-ray-litellm-"))
        with ray_environment(_SHARED["records"]):
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    assert "records" in _SHARED, "a Ray instance that shared_ray did not start is up in this process"
    return ray, _SHARED["records"]


@contextlib.contextmanager
def ray_cases() -> Iterator[Any]:
    """The shared Ray instance, with the environment its cases' processes run in set while the context lasts."""
    ray, records = shared_ray()
    with ray_environment(records):
        yield ray


def stop_shared_ray() -> None:
    """End the instance ``shared_ray`` started, if it is up."""
    if (records := _SHARED.pop("records", None)) is not None:
        import ray

        ray.shutdown()
        shutil.rmtree(records, ignore_errors=True)


def litellm_free(records: Path) -> dict[str, str]:
    """The variables that keep litellm out of a process and out of every process it starts (``WITHOUT_LITELLM``
    first on their path); each one that imports it leaves a record in the folder ``records``."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(WITHOUT_LITELLM), os.environ.get("PYTHONPATH")])),
            IMPORTS: str(records)}  # fmt: skip


def litellm_importers(folder: str | Path | None = None) -> dict[str, str]:
    """The processes that imported litellm under ``tests/without_litellm`` (its records in ``folder``, by default
    those of the Ray cases, ``ray_environment``): pid -> command line."""
    folder = Path(folder or os.environ[IMPORTS])
    return {record.name: record.read_text() for record in folder.iterdir()}


def untimed(value: Any) -> Any:
    """Records without the wall seconds of their reports' stages: two runs never take the same time."""
    if isinstance(value, dict):
        return {key: untimed(item) for key, item in value.items() if key != "seconds"}
    if isinstance(value, list):
        return [untimed(item) for item in value]
    return value


def same_failures(records: dict[str, dict]) -> dict[str, dict]:
    """The records, untimed, with DSPy's name of the failing model taken out of sample errors: its sync path says
    '[down]', its async path (acall, the Ray engine's) '[openai/down]' for the same failure."""
    records = untimed(json.loads(json.dumps(records)))
    for record in records.values():
        for failure in record["provenance"]["report"]["failures"]:
            failure["message"] = re.sub(r"^\[[^]]*\] ", "", failure["message"])
    return records


def write_config(path: Path, models: dict, generators) -> Path:
    path.write_text(yaml.safe_dump({"models": models, "roles": {"generators": generators}}))
    return path


def model(name: str, api_base: str) -> dict:
    return {"model": f"openai/{name}", "api_base": api_base, "cache": False, "num_retries": 0}
