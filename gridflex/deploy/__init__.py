"""The deploy floor: a trained run becomes per-agent files a device can run, checked in closed loop.

``export`` writes one ONNX graph per agent (raw local measurements in, the device's physical
set-point out) or one ``weights.npz`` with a pure-numpy reference implementation beside it;
``agent_graph`` is one agent's controller as a torch module (what the ONNX exporter traces);
``numpy_reference`` is the numpy implementation shipped as ``policy_numpy.py``; ``contract``
writes and reads ``policy_contract.json`` (what each file computes, for which device, bus and
phase, in which units); ``source`` rebuilds a run folder's world and trained policies;
``replay`` is ``gridflex deploy-sim``: the test days again with every agent acting through its
own file only. May import learning, runs, network, fleet, plugins and scenario; nothing below
imports it. See docs/deploy.md.
"""
