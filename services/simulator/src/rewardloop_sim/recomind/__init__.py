"""RecoMind-style simulator (issue #5): seeded users, items and sessions with ground-truth causes.

numpy only. `RecoMindEnv(seed, config, grounded=False)` needs nothing else; `grounded=True` fits the users'
preferences on MovieLens-100k (downloaded once from the recbole wheel, see `datasets.py`).
"""

from .catalogue import Catalogue
from .env import EnvConfig, RecoMindEnv, Session, SessionOutcome, StepOutcome

__all__ = ["Catalogue", "EnvConfig", "RecoMindEnv", "Session", "SessionOutcome", "StepOutcome"]
