"""The policy transformer as an RLlib ``RLModule`` (new API stack, torch), with a value head.

The actor is our policy (``learner.policy``, e.g. the shipped 10m warm start): for an
observation of :class:`rollout.token_env.TokenCompressionEnv` it reads the prompt layout the
policy was trained on, ``<|bos|> intent <|sep|> program so far``, and its next-token logits at
the end-of-program token and at each action's token are the action logits (so the action
distribution is the policy's own, renormalized over the tokens a program can hold); masked
actions get RLlib's ``FLOAT_MIN``. The critic is one linear layer on the last hidden state,
zero-initialized (its first estimates are 0). RLlib's PPO trains both; nothing of PPO is
written here.

``model_config``: ``checkpoint`` (a policy folder) and ``vocabulary`` (the env's action token
ids, ``TokenCompressionEnv.vocabulary``).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.torch_utils import FLOAT_MIN


class CompressorRLModule(TorchRLModule, ValueFunctionAPI):
    """Actor: the policy's next-token logits over the action tokens; critic: a linear head."""

    def setup(self) -> None:
        from learner.policy import load_policy

        self.policy, tok, _ = load_policy(self.model_config["checkpoint"])
        self.policy.train()
        self.bos, self.sep, self.eos, self.pad = (tok.bos_token_id, tok.sep_token_id, tok.eos_token_id,
                                                  tok.pad_token_id)
        vocabulary = torch.as_tensor(list(self.model_config["vocabulary"]), dtype=torch.long)
        self.register_buffer("action_tokens", torch.cat([torch.tensor([self.eos]), vocabulary]), persistent=False)
        self.value_head = torch.nn.Linear(self.policy.config.hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    # ------------------------------------------------------------------ the prompt

    def sequences(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask), both (B, T), left-padded: ``<bos> intent <sep> program``."""
        intents, programs = obs["intent"].long(), obs["program"].long()
        rows = []
        for intent, program in zip(intents, programs):
            words = intent[intent != self.pad]
            written = self.action_tokens[program[program > 0]]
            rows.append(torch.cat([intent.new_tensor([self.bos]), words, intent.new_tensor([self.sep]), written]))
        width = max(len(r) for r in rows)
        ids = intents.new_full((len(rows), width), self.pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=ids.device)
        for i, row in enumerate(rows):
            ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        return ids, mask

    def _last_state(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token logits (B, V), last hidden state (B, C)) after each observation's prefix."""
        ids, mask = self.sequences(obs)
        out = self.policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                          output_hidden_states=True)
        return out.logits[:, -1], out.hidden_states[-1][:, -1]

    # ------------------------------------------------------------------ RLlib

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        logits, state = self._last_state(obs)
        actions = logits[:, self.action_tokens]  # (B, A): action 0 is the end of the program
        actions = actions + torch.clamp(torch.log(obs["action_mask"].float()), min=FLOAT_MIN)
        return {Columns.ACTION_DIST_INPUTS: actions, Columns.EMBEDDINGS: state}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self._last_state(batch[Columns.OBS])[1]
        return self.value_head(embeddings).squeeze(-1)
