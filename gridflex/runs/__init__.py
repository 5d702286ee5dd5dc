"""The runs floor: a scenario becomes a world, a run, its files and its comparisons.

``world`` builds everything a scenario names (feeder, grid, solver, fleet, environment) once;
``run`` is build → train → evaluate → write; ``evaluate`` scores the test days; ``compare`` runs
learners over seeds; ``verify`` replays a run's schedules in OpenDSS; ``report`` draws its plots;
``feeder_cache`` reads feeder files through the registered readers, with a cache; ``torch_device``
checks and resolves the torch device (``--device``, a scenario's ``device``) as a user error.
"""
