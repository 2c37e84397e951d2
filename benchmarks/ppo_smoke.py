"""Two PPO iterations of RLlib on the token-level environment, from a policy checkpoint.

    python benchmarks/ppo_smoke.py DATA CHECKPOINT      # e.g. data/default serve/assets/compressor_10m

RLlib's own PPO (``PPOConfig``, one env runner, the learner in the driver) with
:class:`learner.ppo_module.CompressorRLModule` as the actor and critic and
:class:`rollout.token_env.TokenCompressionEnv` (programs of at most 16 tokens) as the
environment; prints one JSON line per iteration (seconds, mean episode return and length,
env steps so far). A check that the pieces fit, not a training run.
"""
import sys, time, json
import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env
from learner.ppo_module import CompressorRLModule
from rollout.token_env import TokenCompressionEnv

data, init = sys.argv[1], sys.argv[2]
register_env("tc-ppo", lambda cfg: TokenCompressionEnv(**cfg))
env = TokenCompressionEnv(data_dir=data, tokenizer=init, max_program_tokens=16)
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
config = (PPOConfig()
          .environment("tc-ppo", env_config={"data_dir": data, "tokenizer": init, "max_program_tokens": 16})
          .env_runners(num_env_runners=1, rollout_fragment_length=64, num_cpus_per_env_runner=0.5)
          .learners(num_learners=0)
          .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1, lr=1e-4)
          .rl_module(rl_module_spec=RLModuleSpec(module_class=CompressorRLModule,
                                                 model_config={"checkpoint": init, "vocabulary": env.vocabulary.tolist()})))
algo = config.build_algo()
for i in range(2):
    t = time.time()
    r = algo.train()
    er = r.get("env_runners", {})
    print(json.dumps({"iter": i, "s": round(time.time() - t, 1), "return": er.get("episode_return_mean"),
                      "len": er.get("episode_len_mean"), "steps": r.get("num_env_steps_sampled_lifetime")}), flush=True)
algo.stop()
ray.shutdown()
