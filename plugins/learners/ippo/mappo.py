"""``mappo``: multi-agent PPO with a centralised critic (Yu et al., "The Surprising Effectiveness of
PPO in Cooperative Multi-Agent Games", NeurIPS 2022), on IPPO's code.

The actors are IPPO's (:mod:`.agents`; shared per device type by default, or independent) and
execute decentrally on each agent's own observation; only the **critic** sees the global state
``s_t`` (monitored voltages of the previous step, price, hour, temperature, feeder load and PV,
each fleet's mean device state; :meth:`.options.VariantMixin.global_state`), during training.
Defaults follow MAPPO practice where it applies here: parameter sharing, large batches
(``days_per_batch`` 16 = 384 samples per agent), 1 minibatch, 10 epochs, lr 7e-4 annealed linearly,
running value normalisation, gradient clip 10 (for the shared network's mean loss); and the
issue-#21 reward: the first-order difference reward with duals that can fall (PPO-Lagrangian),
no global term. Every field is IPPO's (docs/ippo.md); only the defaults differ.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .learner import IPPO, IPPOConfig


class MAPPOConfig(IPPOConfig):
    """IPPO's options with MAPPO's defaults; the critic is centralised."""

    critic: Literal["centralised"] = Field(
        "centralised", description="critic input: own observation and the global state (training only)")
    shared: bool = Field(True, description="one actor and critic per device type (false: per agent, the ablation)")
    hidden_sizes: list[int] = Field([64, 64], description="hidden layer widths of the actor MLP(s)")
    critic_hidden_sizes: list[int] = Field([64, 64], description="hidden layer widths of the critic MLP(s)")
    learning_rate: float = Field(7e-4, gt=0, le=1, description="initial Adam step size of the actors")
    critic_learning_rate: float = Field(7e-4, gt=0, le=1, description="initial Adam step size of the critics")
    max_grad_norm: float = Field(10.0, gt=0, description="gradient-norm clip (per agent; shared networks as one)")
    days_per_batch: int = Field(16, ge=1, le=366, description="training days rolled out per iteration")
    epochs: int = Field(10, ge=1, le=1000, description="PPO epochs over each batch")
    minibatches: int = Field(1, ge=1, description="minibatches per epoch")
    lr_annealing: bool = Field(True, description="anneal both learning rates linearly to 0 over the budget")
    value_normalisation: Literal["warmup_scale", "running"] = Field(
        "running", description="running per-agent mean and std of the returns (ValueNorm), or the warm-up scale")
    reward_network: Literal["own_node", "sensitivity", "difference"] = Field(
        "difference", description="network term of each agent's reward (see ippo)")
    reward_global: float = Field(0.0, ge=0, description="weight of the shared global term (feeder step cost + priced violations) / N")
    dual_ascent: bool = Field(True, description="PPO-Lagrangian prices (GradMAP's duals and ascent rule)")


class MAPPO(IPPO):
    """MAPPO: IPPO's actors (decentralised execution) with a centralised, training-only critic."""

    name = "mappo"
    Config: ClassVar = MAPPOConfig


LEARNERS = (MAPPO,)
