"""Training: one Ray-free loop (`fit`) driven through a `Session` (local process or Ray Train worker).

`loop`, `session` and `optim` import no Ray and no MLflow; `ray_session` is the Ray Train edge.
"""

from dynconv.train.loop import fit
from dynconv.train.session import LocalSession, Session

__all__ = ["LocalSession", "Session", "fit"]
