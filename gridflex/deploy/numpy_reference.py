"""Pure-numpy reference implementation of gridflex's exported policies (``weights.npz``).

``gridflex export --format npz`` copies this file, unchanged, as ``policy_numpy.py`` beside
``weights.npz``; it needs numpy only. ``policy_contract.json`` says which agent is row ``i`` of
fleet ``f`` and gives the observation features' order, units and formulas. Usage::

    w = np.load("weights.npz")
    u = act(w, fleet, x)   # x [..., N_f, k] observation features -> u [..., N_f, d] in [0, 1]
"""

import numpy as np

ACTIVATIONS = {"relu": lambda h: np.maximum(h, np.float32(0)), "tanh": np.tanh,
               "silu": lambda h: h / (np.float32(1) + np.exp(-h))}


def act(weights, fleet, x):
    """``u [..., N, d]`` of every agent of fleet ``fleet`` from its own features ``x [..., N, k]``
    (agent ``i`` reads row ``i`` of ``x`` and of the fleet's arrays only); float32 throughout."""
    p = lambda key: weights[f"f{fleet}.{key}"]  # noqa: E731
    n, k = x.shape[-2:]
    h = (np.asarray(x, dtype=np.float32) - p("mean")) / np.sqrt(p("var") + np.float32(p("eps")))
    h = np.clip(h, -np.float32(p("clip")), np.float32(p("clip")))
    h = np.moveaxis(h.reshape(-1, n, k), 1, 0)  # agent-major [N, M, k]
    layers = int(p("n_layers"))
    for layer in range(layers):
        h = h @ p(f"W{layer}") + p(f"b{layer}")[:, None, :]  # [N, M, out]
        if layer < layers - 1:
            h = ACTIVATIONS[str(p("activation"))](h)
    h = h + np.float32(p("offset"))
    u = np.float32(1) / (np.float32(1) + np.exp(-h)) if str(p("squash")) == "sigmoid" else np.clip(h, 0, 1)
    return np.moveaxis(u, 0, 1).reshape(*x.shape[:-1], u.shape[-1])
