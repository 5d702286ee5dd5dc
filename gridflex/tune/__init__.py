"""Hyper-parameter studies (``gridflex tune``): one learner, one or more scenario files, one
fair objective, an Optuna study on an embedded journal file or a shared PostgreSQL database.

Its job: turn a learner's own search space (``Learner.search_space(trial)``) into trials that
train on validation days only, score each trial by a censored time to target per
(scenario, seed), share the trials among workers without losing or duplicating one, and leave
results a user can act on (a ``--params`` YAML overlay, a summary as JSON and PNG).

Floor: between :mod:`gridflex.runs` and :mod:`gridflex.deploy`; it imports from runs, learning,
scenario, plugins, fleet, network and floor 0, and nothing below imports it. Optuna is an
optional extra (``pip install gridflex[tune]``): only :mod:`.study`, :mod:`.storage` and
:mod:`.summary` import it, lazily; :mod:`.overlay` (``--params``) never does.

Modules: :mod:`.overlay` (the tuned-parameters YAML overlay), :mod:`.spaces` (a learner's space,
its defaults as the first trial), :mod:`.objective` (the censored time to target of one trial),
:mod:`.storage` (journal file or PostgreSQL, credentials kept private, the cap's lock),
:mod:`.workers` (the worker loop: exact trial cap, heartbeats, stale trials retried),
:mod:`.study` (settings, the command's orchestration, progress), :mod:`.summary` (JSON, PNG,
overlay of the best trial). The user documentation is docs/tuning.md.
"""
