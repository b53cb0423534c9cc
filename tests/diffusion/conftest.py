import pytest
import torch

from omnistage.diffusion.engine import DiffusionEngine, decode_batched
from omnistage.diffusion.registry import family_class
from omnistage.diffusion.params import parse_params
from omnistage.diffusion.schedulers import SchedulerFactory, scheduler_names
from omnistage.diffusion.text import PromptCache, PromptEncoder
from omnistage.models.tiny import ensure_tiny

LIMITS = {"max_pixels": 1 << 20, "max_steps": 100, "max_frames": 65}


class Harness:
    """An in-process engine over one tiny family: add requests, run to the end, decode."""

    def __init__(self, name: str, max_batch: int = 16) -> None:
        path = str(ensure_tiny(name))
        self.family = family_class(path)(path, {"text", "denoise", "vae"}, torch.float32, "cpu")
        self.info = {**self.family.info(), "schedulers": scheduler_names(self.family.prediction), **LIMITS}
        self.info.setdefault("num_frames", 9)
        self.text = PromptEncoder(self.family.encode_text, PromptCache(16 << 20), max_batch)
        self.engine = DiffusionEngine(self.family, SchedulerFactory(self.family.pipe.scheduler, self.family.prediction),
                                      max_batch, self.text)

    def add(self, rid: str, prompt: str, **params) -> None:
        self.engine.add(rid, parse_params(self.info, params), prompt=prompt)

    def run(self) -> dict[str, torch.Tensor]:
        done = {}
        while self.engine.has_work():
            for f in self.engine.step():
                done[f.rid] = f.latents
        return done

    def pixels(self, latents: dict[str, torch.Tensor]) -> dict[str, object]:
        rids = list(latents)
        return dict(zip(rids, decode_batched(self.family.decode, [latents[r] for r in rids], 8)))


@pytest.fixture(scope="module")
def harness():
    made = {}

    def get(name: str, max_batch: int = 16) -> Harness:
        if (name, max_batch) not in made:
            made[(name, max_batch)] = Harness(name, max_batch)
        return made[(name, max_batch)]
    return get
