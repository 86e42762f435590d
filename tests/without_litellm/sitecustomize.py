"""Run by Python at start-up (``sitecustomize``, found on the ``PYTHONPATH``) in the processes a test says must
never import litellm, and in every process they start: workers, Ray actors.

litellm's package can still be found and its files read (fusion_dspy reads the price map litellm ships without
importing it); importing it writes the importing process's command line to a file named by its pid in the folder
``$FUSION_TEST_LITELLM_IMPORTS`` (a record that survives an ``ImportError`` caught on the way), then fails.
"""

import importlib.abc
import importlib.machinery
import os
import sys


class _Refused(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if folder := os.environ.get("FUSION_TEST_LITELLM_IMPORTS"):
            with open(os.path.join(folder, str(os.getpid())), "w") as record:
                record.write(" ".join(sys.argv))
        raise ImportError("litellm was imported by a process that must not need it (tests/without_litellm)")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "litellm":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = _Refused()
        return spec


sys.meta_path.insert(0, _Finder())
