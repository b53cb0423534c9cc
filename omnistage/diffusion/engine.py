"""The step-batched denoiser.

Each request carries its own state: latents, its own scheduler (timesteps/sigmas and step
index), guidance scale and seeded generator. One engine step runs one model forward over the
rows of every request in the chosen bucket, each row at its own timestep (a request with
classifier-free guidance contributes an unconditional and a conditional row), then applies each
request's own scheduler update. Requests join between steps and leave when their last step is
done, so step counts, guidance scales and schedulers mix freely in one batch.

A request may cache steps (``step_cache.py``, its ``cache`` parameters): a step it skips reuses
its last model output, and its rows leave that step's forward while the others' run.

Only requests of the same latent and embedding shape can share a forward (a bucket). Which
requests start and which bucket a step serves is the admission policy's (``admission.py``): a
width per latent size measured on this machine (the default), a compute budget shared by
deficit round-robin, or a fixed number of requests a step; under each, a new resolution never
waits for a running bucket to drain (no head-of-line blocking).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

from omnistage.diffusion.admission import Admission, ComputeBudget, FixedBatch, MeasuredWidth
from omnistage.diffusion.families import Family
from omnistage.diffusion.lora import Adapters
from omnistage.diffusion.params import GenerationParams
from omnistage.diffusion.schedulers import SchedulerFactory, step_kwargs
from omnistage.diffusion.step_cache import StepCache
from omnistage.diffusion.text import Embeds, PromptEncoder
from omnistage.diffusion.widths import measure_width
from omnistage.errors import RequestRejected

log = logging.getLogger("omnistage.worker")
WIDEST = 4  # a measured step width stays within this many times max_batch rows
ADAPTER_AGE = 8  # steps a request may wait for its LoRA while more adapters than max_loras are in use


@dataclass
class Job:
    rid: str
    params: GenerationParams
    order: int
    prompt: str | None = None
    cond: Embeds | None = None
    uncond: Embeds | None = None
    scheduler: Any = None
    timesteps: torch.Tensor | None = None
    index: int = 0
    latents: torch.Tensor | None = None
    generator: torch.Generator | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    served: int = -1  # the engine step that last advanced it
    image: Any = None  # the input image it starts from (img2img), until its latents are made
    text_key: tuple[Any, ...] = ()  # what of its embeddings' shapes must match a batch's (the family says)
    mask: Any = None  # inpainting: the mask image (white repaints), until its latent grid is made
    inpaint: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (mask grid, image latents, noise)
    cache: StepCache | None = None  # its step cache (None: every step runs the model)

    @property
    def total(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)

    @property
    def bucket(self) -> tuple[Any, ...]:
        assert self.latents is not None and self.cond is not None
        return tuple(self.latents.shape), self.text_key


@dataclass
class Finished:
    rid: str
    latents: torch.Tensor  # (1, ...) final latents
    steps: int
    skipped: int = 0  # steps that reused the request's last model output (each skips every block)


class DiffusionEngine:
    def __init__(self, family: Family, schedulers: SchedulerFactory, max_batch: int,
                 text: PromptEncoder | None = None, budget: float | Literal["auto"] | None = None,
                 adapters: Adapters | None = None) -> None:
        """``budget``: a step's compute, in rows times latent elements (``admission.ComputeBudget``);
        "auto": each latent shape's width measured here, at most ``WIDEST * max_batch`` rows
        (``admission.MeasuredWidth``); None: at most ``max_batch`` requests a step, of any size
        (``admission.FixedBatch``). ``adapters``: the LoRAs requests may name (``lora.py``)."""
        self.family = family
        self.adapters = adapters
        self.schedulers = schedulers
        self.max_batch = max_batch
        self.text = text  # None when embeddings arrive from a text_encode stage
        self.waiting: list[Job] = []  # not started: embeddings and latents not made yet
        self.running: dict[str, Job] = {}
        self.steps = 0
        self._order = 0
        self.last_batch = 0
        self.admission: Admission
        if budget == "auto":
            self.admission = MeasuredWidth(self._probe, self._shape)
        elif budget is None:
            self.admission = FixedBatch(max_batch, self._shape)
        else:
            self.admission = ComputeBudget(budget, self._shape)

    # --- requests ----------------------------------------------------------------------
    def add(self, rid: str, params: GenerationParams, prompt: str | None = None,
            embeds: tuple[Embeds, Embeds | None] | None = None, image: Any = None, mask: Any = None) -> None:
        """``image``: a PIL image to start from (img2img): it is noised ``params.strength`` of the
        way into the schedule, which then runs from there. ``mask`` (with an image; grayscale,
        white repaints): inpainting, where after every step the latents outside the mask are
        put back to the image's, noised to the next step's level."""
        if mask is not None and image is None:
            raise ValueError("a mask needs the image it applies to")
        if (prompt is None) == (embeds is None):
            raise ValueError("a diffusion request needs exactly one of a prompt or its embeddings")
        if prompt is not None and self.text is None:
            raise ValueError("this engine has no text encoder; send prompt embeddings")
        if image is not None and self.family.first_step(params.steps, params.strength) >= params.steps:
            raise RequestRejected(f"strength {params.strength} of {params.steps} steps runs no step; raise either",
                                  param="strength")
        job = Job(rid, params, self._order, prompt=prompt, image=image, mask=mask)
        if embeds is not None:
            job.cond, job.uncond = embeds
            if params.cfg and job.uncond is None:
                raise ValueError("guidance_scale > 1 needs the negative prompt's embedding")
        self._order += 1
        self.waiting.append(job)

    def abort(self, rid: str) -> None:
        self.waiting = [j for j in self.waiting if j.rid != rid]
        self.running.pop(rid, None)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def progress(self) -> dict[str, tuple[int, int]]:
        """rid -> (steps done, steps in total) for every running request."""
        return {rid: (j.index, j.total) for rid, j in self.running.items()}

    # --- the step ----------------------------------------------------------------------
    def step(self) -> list[Finished]:
        self._start(self.admission.admit(self.waiting, list(self.running.values())))
        batch = self.admission.pick(list(self.running.values()))
        if batch:
            self._advance(batch)
        self.steps += 1
        done = [j for j in batch if j.index >= j.total]
        for job in done:
            del self.running[job.rid]
        return [Finished(j.rid, j.latents, j.total, j.cache.skipped if j.cache else 0)  # type: ignore[arg-type]
                for j in done]

    def _shape(self, job: Job) -> tuple[int, ...]:
        p = job.params
        return tuple(self.family.latent_shape(p.height, p.width, p.num_frames))

    def _probe(self, job: Job) -> int:
        """The step width for ``job``'s latent shape, timed with its embeddings (``widths.py``)."""
        assert job.latents is not None and job.cond is not None and job.timesteps is not None
        device, dtype = job.latents.device, job.latents.dtype
        noise = torch.Generator("cpu").manual_seed(0)
        row = {**job.cond, **self.family.row_inputs(job.params)}
        t = job.timesteps[0].float()

        def run(rows: int) -> None:
            x = torch.randn((rows, *job.latents.shape[1:]), generator=noise, dtype=dtype).to(device)  # type: ignore[union-attr]
            with torch.inference_mode():
                self.family.denoise(x, t.repeat(rows).to(self.family.device), self.family.stack([row] * rows))

        if self.adapters is not None:
            self.adapters.activate(None)  # (timed without a LoRA's extra work; each step sets its own)
        width = measure_width(run, WIDEST * self.max_batch, self.family.device)
        log.info("diffusion step width for latent %s: %s", tuple(job.latents.shape[1:]), width.summary())
        return width.rows

    def _start(self, jobs: list[Job]) -> None:
        """Embed the prompts of ``jobs`` (one batched text-encoder call) and draw their noise."""
        need = [j for j in jobs if j.cond is None]
        if need:
            assert self.text is not None
            texts = [j.prompt for j in need] + [j.params.negative_prompt for j in need if j.params.cfg]
            embeds = iter(self.text.encode(texts))  # type: ignore[arg-type]
            for job in need:
                job.cond = next(embeds)
            for job in need:
                job.uncond = next(embeds) if job.params.cfg else None
        for job in jobs:
            self._init(job)
            job.text_key = self.family.text_key(job.cond)  # type: ignore[arg-type]
            self.running[job.rid] = job
        started = {j.rid for j in jobs}
        self.waiting = [j for j in self.waiting if j.rid not in started]

    def _init(self, job: Job) -> None:
        p = job.params
        job.scheduler = self.schedulers.make(p.scheduler)
        shape = self.family.latent_shape(p.height, p.width, p.num_frames)
        self.family.set_timesteps(job.scheduler, p.steps, shape)
        job.timesteps = job.scheduler.timesteps
        job.generator = torch.Generator("cpu").manual_seed(p.seed)
        if job.image is None:
            job.latents = self.family.init_latents(shape, job.generator, job.scheduler)
        else:
            self._from_image(job)
        job.extra = step_kwargs(job.scheduler, job.generator, self.family.step_with_generator)
        if p.cache.policy != "off":
            job.cache = StepCache(p.cache)

    def _from_image(self, job: Job) -> None:
        """img2img, as the diffusers pipelines do it: the schedule's last ``strength`` share, and
        the image's latents (posterior sampled, then noise, both from the request's generator)
        noised to its first timestep."""
        p, scheduler = job.params, job.scheduler
        start = self.family.first_step(p.steps, p.strength) * scheduler.order
        job.timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        family, first = self.family, job.timesteps[:1]  # type: ignore[index]
        # Inpainting as the inpaint pipelines do it for a text-to-image model: their latents, the
        # draw they spend on the masked image, a full-strength request starting from pure noise.
        encode = family.image_latents if job.mask is None else family.inpaint_latents
        with torch.inference_mode():
            init = encode(job.image, p.height, p.width, job.generator)
        noise = randn_tensor(init.shape, generator=job.generator, device=init.device, dtype=init.dtype)
        if job.mask is None:
            job.latents = family.noised(scheduler, init, noise, first)
        else:
            family.skip_masked_image(job.generator, p.height, p.width)  # type: ignore[arg-type]
            job.latents = family.inpaint_start(scheduler, init, noise, first, p.strength)
            job.inpaint = (family.latent_mask(job.mask, p.height, p.width), init, noise)
        job.image = job.mask = None

    def _keep_unmasked(self, job: Job) -> None:
        """After a step: outside the mask, the image's latents noised to the next step's level
        (the last step: the image's own)."""
        assert job.inpaint is not None
        mask, init, noise = job.inpaint
        nxt = job.index + 1
        if nxt < job.total:
            init = self.family.noised(job.scheduler, init, noise, job.timesteps[nxt:nxt + 1])  # type: ignore[index]
        job.latents = (1 - mask) * init + mask * job.latents

    def _with_adapters(self, batch: list[Job]) -> list[Job]:
        """The jobs of at most ``max_loras`` adapters (more would unload one to load another
        within the step, every step): first the adapters whose stalest job has waited
        ``ADAPTER_AGE`` steps or more, then those loaded already, then by staleness. The others
        wait; growing staler, their turn comes within ``ADAPTER_AGE`` steps."""
        if self.adapters is None:
            return batch
        groups: dict[str, list[Job]] = {}
        for job in batch:
            if job.params.lora is not None:
                groups.setdefault(job.params.lora[0], []).append(job)
        if len(groups) <= self.adapters.capacity:
            return batch

        def rank(name: str) -> tuple[bool, bool, int]:
            oldest = min(j.served for j in groups[name])
            return self.steps - oldest < ADAPTER_AGE, name not in self.adapters.loaded, oldest  # type: ignore[union-attr]
        keep = set(sorted(groups, key=rank)[:self.adapters.capacity])
        return [j for j in batch if j.params.lora is None or j.params.lora[0] in keep]

    def _advance(self, batch: list[Job]) -> None:
        batch = self._with_adapters(batch)
        run = [j for j in batch if j.cache is None or not j.cache.skip(j.index, j.total)]
        outputs, ran = iter(self._predict(run)), {j.rid for j in run}
        for job in batch:
            if job.rid in ran:
                noise = next(outputs)
                if job.cache is not None:
                    job.cache.computed(job.index, noise)
            else:
                noise = job.cache.reused()  # type: ignore[union-attr]
            t = job.timesteps[job.index]  # type: ignore[index]
            job.latents = job.scheduler.step(noise, t, job.latents, **job.extra, return_dict=False)[0]
            if job.inpaint is not None:
                self._keep_unmasked(job)
            job.index += 1
            job.served = self.steps
        self.last_batch = len(batch)

    def _predict(self, batch: list[Job]) -> list[torch.Tensor]:
        """Each job's (guided) model output at its step: one forward per LoRA among them (the
        jobs of one adapter and scale, or of none, together)."""
        groups: dict[Any, list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault(job.params.lora, []).append(i)
        if len(groups) <= 1 and self.adapters is None:
            return self._forward(batch)
        out: list[Any] = [None] * len(batch)
        for lora, rows in groups.items():
            assert self.adapters is not None, "a request names a LoRA this engine has none of"
            self.adapters.activate(lora)
            for i, noise in zip(rows, self._forward([batch[i] for i in rows])):
                out[i] = noise
        return out

    def _forward(self, batch: list[Job]) -> list[torch.Tensor]:
        """Each job's (guided) model output at its step: one forward over all their rows."""
        if not batch:
            return []
        xs, ts, conds = [], [], []
        for job in batch:
            t = job.timesteps[job.index]  # type: ignore[index]
            rows = [job.uncond, job.cond] if job.params.cfg else [job.cond]
            if extra := self.family.row_inputs(job.params):
                rows = [{**r, **extra} for r in rows]  # type: ignore[dict-item]
            x = torch.cat([job.latents] * len(rows))  # type: ignore[list-item]
            xs.append(self.family.scale_input(job.scheduler, x, t))
            ts.extend([t.float()] * len(rows))
            conds.extend(rows)
        cond = self.family.stack(conds)  # type: ignore[arg-type]
        with torch.inference_mode():
            pred = self.family.denoise(torch.cat(xs), torch.stack(ts).to(self.family.device), cond)
        row, out = 0, []
        for job in batch:
            if job.params.cfg:
                uncond, text = pred[row:row + 1], pred[row + 1:row + 2]
                out.append(self.family.guide(uncond, text, job.params.guidance))
                row += 2
            else:
                out.append(pred[row:row + 1].clone())  # (a step cache keeps it: not a view of the batch)
                row += 1
        return out


def decode_batched(decode: Callable[[torch.Tensor], Any], latents: list[torch.Tensor], max_rows: int) -> list[Any]:
    """Decode same-shape latents together, ``max_rows`` at a time (VAE slicing); keeps order."""
    out: list[Any] = [None] * len(latents)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, lat in enumerate(latents):
        groups.setdefault(tuple(lat.shape), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), max_rows):
            part = idx[start:start + max_rows]
            with torch.inference_mode():
                pixels = decode(torch.cat([latents[i] for i in part]))
            for i, px in zip(part, pixels):
                out[i] = px
    return out
