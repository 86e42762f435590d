"""Ready task programs (shipped as fusion_dspy.programs): each a ``fusion_dspy.Task`` with data, module and metric.

``resolve_task("math")`` (``--program math``) finds them here by name. Each name is both a submodule and the
Task it defines; the package attribute is the Task, so import helpers with ``from fusion_dspy.programs.math
import load_math`` (``import fusion_dspy.programs.math as m`` would give the Task).
"""

from fusion_dspy.programs.factual_qa import factual_qa
from fusion_dspy.programs.instructions import instructions
from fusion_dspy.programs.math import math
from fusion_dspy.programs.translation import translation

__all__ = ["factual_qa", "instructions", "math", "translation"]
