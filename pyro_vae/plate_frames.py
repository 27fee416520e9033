"""Drawing a guide's sites inside the plates the model puts around them.

A guide that draws a site with batch dims outside the model's plates gives the site's
log q the model's shape but no plate dims, which Pyro's shape checks refuse under a
particle plate ("invalid log_prob shape"), and which the diagnostics then blamed on the
model ("a model that does not broadcast": tester BO, a Gaussian mixture's q of its K
components drawn outside the model's ``components`` plate). :func:`vectorized_frames`
reads the frames around each site of a model's trace, and :func:`inside_plates` enters
them in a guide, each plate made once per run. Used by the fixed-distribution guide of
:mod:`pyro_vae.guides.fixed` and by ``AutoCAVI``'s fitted guide.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import pyro


def vectorized_frames(trace, sites) -> dict:
    """{site: the vectorized plate frames (Pyro's ``CondIndepStackFrame``: name, size,
    dim) around it in ``trace``} for each of ``sites`` that ``trace`` samples."""
    found = {}
    for name in sites:
        node = trace.nodes.get(name)
        if node is not None and node["type"] == "sample":
            found[name] = tuple(f for f in node["cond_indep_stack"] if f.vectorized)
    return found


@contextmanager
def inside_plates(frames, made: dict):
    """Inside the plates ``frames`` (name, size, dim), taken from ``made`` or made and kept
    there: a plate made twice in one run is two sites of one name, which Pyro refuses
    ("Multiple sample sites named")."""
    with ExitStack() as stack:
        for frame in frames:
            key = (frame.name, frame.size, frame.dim)
            if key not in made:
                made[key] = pyro.plate(frame.name, frame.size, dim=frame.dim)
            stack.enter_context(made[key])
        yield
