import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from omnistage.diffusion.schedulers import SchedulerFactory, scheduler_names, step_kwargs


def base():
    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def test_names_follow_the_training_objective():
    assert {"ddim", "euler", "euler_a", "dpm++", "pndm", "unipc"} == set(scheduler_names("epsilon"))
    assert {"flow_euler", "unipc"} == set(scheduler_names("flow"))


def test_every_request_gets_its_own_copy():
    factory = SchedulerFactory(base(), "epsilon")
    a, b = factory.make("dpm++"), factory.make("dpm++")
    a.set_timesteps(4)
    b.set_timesteps(10)
    assert a is not b and len(a.timesteps) == 4 and len(b.timesteps) == 10


def test_interleaved_requests_step_like_separate_runs():
    """Two multistep schedulers advanced alternately equal each advanced alone."""
    factory = SchedulerFactory(base(), "epsilon")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 4, 4, generator=gen), torch.randn(6, 1, 4, 4, 4, generator=gen)

    def run(s, x, i):
        return s.step(noise[i], s.timesteps[i], x, return_dict=False)[0]

    alone = factory.make("dpm++")
    alone.set_timesteps(6)
    x = x0
    for i in range(6):
        x = run(alone, x, i)
    s1, s2 = factory.make("dpm++"), factory.make("dpm++")
    s1.set_timesteps(6)
    s2.set_timesteps(6)
    y1 = y2 = x0
    for i in range(6):
        y1, y2 = run(s1, y1, i), run(s2, y2, i)
    assert torch.equal(x, y1) and torch.equal(x, y2)


def test_flow_unipc_takes_the_checkpoint_shift():
    made = SchedulerFactory(FlowMatchEulerDiscreteScheduler(shift=5.0), "flow").make("unipc")
    assert isinstance(made, UniPCMultistepScheduler)
    assert made.config.use_flow_sigmas and made.config.flow_shift == 5.0


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown scheduler"):
        SchedulerFactory(base(), "epsilon").make("flow_euler")


def test_step_kwargs_follow_the_pipeline():
    gen = torch.Generator()
    assert step_kwargs(base(), gen, with_generator=True) == {"eta": 0.0, "generator": gen}
    assert step_kwargs(FlowMatchEulerDiscreteScheduler(), gen, with_generator=False) == {}
