"""Training: one Ray-free loop (`loop.fit`) driven through a `session.Session` (a local process, a Tune
trial actor or a Ray Train worker).

`loop`, `session`, `optim` and `subset_val` import no Ray and no MLflow; `ray_session` is the Ray edge.
"""
