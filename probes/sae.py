"""SAE lens: concept features of B, their survival in U, and feature-steering restoration.

SPEC §3–§4, issue 4. At one residual site (``blocks.{layer}.hook_resid_post``):

1. **An SAE for B.** Loaded from disk with sae-lens' own loader (``sae_path``: a folder
   with ``cfg.json`` + ``sae_weights.safetensors``, e.g. a Gemma Scope or SAELens
   release), or trained on B's token activations with sae-lens' ``SAETrainer`` (a TopK
   SAE by default). Training tokens: B on forget and retain prompts plus a text corpus:
   the ``text`` files when given, otherwise B's own text (``corpus_tokens`` tokens of
   sampled continuations of short openers, :mod:`audit.corpus`, cached by model hash).
   A tenth of the sequences is held out; explained variance, L0 and dead features are
   measured there and recorded with the tokens trained on and the corpus's source.
   Trained SAEs are cached by model hash × layer × config × data, with that record.
2. **Concept features.** Per prompt, a feature's code is its largest activation over
   the prompt tokens (the first, a BOS/attention sink, excluded); a feature *fires* on a
   prompt when that is positive. Features firing on more than ``max_firing_rate`` of all
   prompts are dropped; the rest are ranked by an F1 rule (firing as a classifier of
   forget vs retain prompts, "Suppression or Deletion") or SAEBench's frequency rule
   (forget firing rate among features that fire on at most ``retain_firing_max`` of
   retain prompts). The top ``n_features`` are kept.
3. **Survival.** Each concept feature's mean code on forget prompts in U (and N), with
   U's activations encoded by B's SAE, divided by B's.
4. **Restoration.** In U, the concept features' codes are moved by an item-agnostic
   amount: the mean code shift B − U over the prompt tokens of the *other* folds of
   forget subjects, times a scale. The edit goes back through the decoder as a
   difference, ``h + dec(z') − dec(z)``, so the SAE's error term is kept (the residual
   is never replaced by the reconstruction). Controls: frequency-matched random feature
   sets moved the same way. The scale is chosen per fold on the other folds (largest
   excess over the controls within the side-effect tolerance on retain; ties to the
   smallest scale) by :mod:`audit.crossfit`, as in the steering lens; the edits are
   scored by :mod:`audit.intervene`. N goes through the same procedure with its own
   shift (B − N), so recovery is ``(S_restored(U) − S_restored(N)) / (S(B) − S(N))``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from audit.context import AuditContext
from audit.corpus import corpus_key, corpus_summary, openers_for, sample_corpus
from audit.crossfit import Sweep, edited_per_item, edited_recovery, require_folds, subject_folds
from audit.errors import LensError
from audit.intervene import PreparedItems, item_metrics, per_fold_scores, unedited
from audit.lensdata import SAEData, SAELensConfig
from audit.models import LoadedModel, cache_root
from audit.progress import log as logger
from audit.progress import progress
from audit.registry import register_lens
from audit.schema import LensResult
from audit.scoring import encode_prompt, pad_batch, pad_id_of

SAE_CACHE_VERSION = "2"


# --------------------------------------------------------------------- activations


@torch.no_grad()
def token_acts(model: LoadedModel, seqs: Sequence[Sequence[int]], hook: str, batch_size: int = 32,
               bar=None) -> tuple[Float[Tensor, "tok d"], np.ndarray]:
    """Activations at every position but the first of each sequence, and each one's sequence index.

    The forward pass stops after the hook's block (the rest of the model is not needed)."""
    acts, owner = [], []
    pad = pad_id_of(model.tokenizer)
    layer = _layer_of(hook)
    stop = layer + 1 if layer is not None and layer + 1 < model.n_layers else None
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s : s + batch_size]
        ids, mask = pad_batch(chunk, pad, model.device)
        _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n == hook,
                                               stop_at_layer=stop)
        a = cache[hook].float().cpu()
        for i, seq in enumerate(chunk):
            acts.append(a[i, 1 : len(seq)])
            owner += [s + i] * (len(seq) - 1)
        if bar is not None:
            bar.advance(len(chunk))
    if not acts:
        return torch.zeros(0, model.d_model), np.zeros(0, dtype=int)
    return torch.cat(acts), np.asarray(owner, dtype=int)


def _pooled_codes(codes: Tensor, owner: np.ndarray, n: int) -> Tensor:
    """Per-sequence max code of each feature."""
    out = torch.zeros(n, codes.shape[1])
    idx = torch.from_numpy(owner).long()
    return out.index_reduce_(0, idx, codes, "amax", include_self=True)  # codes ≥ 0


def _mean_codes(codes: Tensor, owner: np.ndarray, n: int) -> Tensor:
    """Per-sequence mean code of each feature over its tokens."""
    idx = torch.from_numpy(owner).long()
    out = torch.zeros(n, codes.shape[1]).index_add_(0, idx, codes)
    cnt = torch.bincount(idx, minlength=n).clamp(min=1)
    return out / cnt[:, None]


@torch.no_grad()
def encode(sae, x: Tensor, batch: int = 8192) -> Tensor:
    return torch.cat([sae.encode(x[s : s + batch]).float() for s in range(0, len(x), batch)]) if len(x) else \
        torch.zeros(0, sae.cfg.d_sae)


@torch.no_grad()
def reconstruction(sae, x: Tensor) -> dict[str, Any]:
    """Explained variance, L0 and dead-feature share of an SAE on activations ``x``."""
    codes = encode(sae, x)
    rec = torch.cat([sae.decode(codes[s : s + 8192]).float() for s in range(0, len(x), 8192)])
    resid = ((x - rec) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    fired = (codes > 0).any(0)
    return {
        "explained_variance": float(1 - resid / total),
        "l0": float((codes > 0).float().sum(1).mean()),
        "dead_fraction": float(1 - fired.float().mean()),
        "n_tokens": int(len(x)),
    }


# -------------------------------------------------------------------------- the SAE


def drop_outliers(acts: Tensor, factor: float) -> Tensor:
    """``acts`` without the rows whose norm exceeds ``factor`` × the median norm."""
    if not len(acts):
        return acts
    n = acts.norm(dim=1)
    return acts[n <= factor * n.median()]


def _read_text(paths: Sequence[str]) -> list[str]:
    out = []
    for p in paths:
        f = Path(p)
        if not f.is_file():
            raise LensError(f"SAE training text file not found: {f}")
        out += [line.strip() for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return out


def _train_key(model: LoadedModel, hook: str, cfg: SAELensConfig, texts: Sequence[str]) -> str:
    """Cache key of a trained SAE; ``texts``: everything that identifies its training data
    (text lines, prompts, the corpus's own cache key)."""
    fields = ["architecture", "expansion", "k", "l1_coefficient", "train_samples", "max_epochs", "train_batch", "lr",
              "holdout", "outlier_norm", "center"]
    blob = json.dumps({
        "v": SAE_CACHE_VERSION, "model": model.hash, "hook": hook, **{f: getattr(cfg, f) for f in fields},
        "data": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def train_sae(acts: Tensor, cfg: SAELensConfig, seed: int, hook: str, model_name: str):
    """Train an SAE on token activations with sae-lens' ``SAETrainer``; returns the training SAE."""
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    if len(acts) < cfg.train_batch:  # the batch generator below would never yield
        raise LensError(
            f"only {len(acts)} token activations to train an SAE at {hook} (one training batch is "
            f"{cfg.train_batch}): give the sae lens more text (lens option `text`: files or strings) or a "
            "trained SAE (`sae_path`)"
        )
    torch.manual_seed(seed)
    acts = drop_outliers(acts, cfg.outlier_norm)
    d_in = acts.shape[1]
    common = dict(d_in=d_in, d_sae=cfg.expansion * d_in, normalize_activations="expected_average_only_in")
    if cfg.architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=min(cfg.k, cfg.expansion * d_in), **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common))
    if cfg.center:  # in the trainer's normalised units: it scales inputs by sqrt(d_in) / mean norm
        with torch.no_grad():
            sae.b_dec.copy_(acts.mean(0) * d_in**0.5 / acts.norm(dim=1).mean())
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = model_name

    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            perm = torch.randperm(len(acts), generator=gen)
            for s in range(0, len(perm) - cfg.train_batch + 1, cfg.train_batch):
                yield acts[perm[s : s + cfg.train_batch]]

    samples = max(cfg.train_batch, min(cfg.train_samples, int(cfg.max_epochs * len(acts))))
    tcfg = SAETrainerConfig(
        total_training_samples=samples, train_batch_size_samples=cfg.train_batch, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_scheduler_name="cosineannealing", lr_decay_steps=samples // cfg.train_batch,
        device="cpu", dead_feature_window=200, feature_sampling_window=400,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=20,
    )
    return SAETrainer(tcfg, sae, batches()).fit()


def _corpus(ctx: AuditContext, cfg: SAELensConfig, texts: list[str], prompts: list[str]):
    """The SAE's training corpus beside the audit prompts: ``(sequences(), record, identity)``.

    ``sequences`` is called only when an SAE is trained (sampling is the slow part);
    ``identity`` enters the SAE's cache key in its place."""
    B = ctx.models["base"]
    if texts:
        return (lambda: [encode_prompt(B.tokenizer, t) for t in texts],
                {"source": "text files", "files": list(cfg.text), "lines": len(texts)}, texts)
    if cfg.sae_path is not None or cfg.corpus_tokens == 0:
        return (lambda: [], {"source": "audit prompts"}, [])
    items = [*ctx.items["forget"], *ctx.items["retain"]]
    openers, kind = openers_for(B.tokenizer, prompts, sorted({it.subject or "" for it in items}))
    settings: dict[str, Any] = {"tokens": cfg.corpus_tokens, "length": cfg.corpus_length, "temperature": cfg.corpus_temperature,
                "top_p": cfg.corpus_top_p, "seed": ctx.seed}
    record = {"source": "self-generated", "openers": kind, "n_openers": len(openers), **settings}
    ckey = corpus_key(B, openers, top_k=512, batch=cfg.corpus_batch, **settings)  # sample_corpus's own cache key
    return (lambda: sample_corpus(B, openers, batch=cfg.corpus_batch, **settings), record, [f"corpus:{ckey}"])


def get_sae(ctx: AuditContext, cfg: SAELensConfig, hook: str, data, key: str, corpus: dict):
    """Load B's SAE from ``sae_path``, from the cache, or train and cache one.

    ``data()`` gives ``(train, held_out, examples)`` token sequences. Returns the SAE, its
    source (``loaded``, ``cached``, ``trained``) and, unless loaded, its quality record
    (measured on the held-out sequences when trained, and cached with it)."""
    from sae_lens import SAE

    B = ctx.models["base"]
    if cfg.sae_path is not None:
        p = Path(cfg.sae_path)
        if not (p / "cfg.json").is_file():
            raise LensError(f"{p} is not an SAE saved by sae-lens (no cfg.json)")
        try:
            sae = SAE.load_from_disk(p, device="cpu")
        except Exception as e:  # noqa: BLE001 - any failure of the loader is a bad SAE folder
            raise LensError(f"could not load the SAE in {p}: {type(e).__name__}: {e}") from None
        return sae.eval(), "loaded", None
    path = cache_root() / "sae" / key
    if (path / "cfg.json").is_file() and (path / "quality.json").is_file():
        try:
            quality = json.loads((path / "quality.json").read_text())
            return SAE.load_from_disk(path, device="cpu").eval(), "cached", quality
        except (OSError, ValueError):
            pass  # a damaged entry is trained again
    train_seqs, hold_seqs, examples = data()
    with progress("SAE training activations", total=len(train_seqs) + len(hold_seqs)) as bar:
        acts, _ = token_acts(B, train_seqs, hook, ctx.config.batch_size, bar)
        hold_acts, _ = token_acts(B, hold_seqs, hook, ctx.config.batch_size, bar)
    logger.info("training an SAE on %d token activations of the base at %s", len(acts), hook)
    tsae = train_sae(acts, cfg, ctx.seed, hook, B.path)
    tmp = path.with_name(f".{key}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tsae.save_inference_model(tmp)
    sae = SAE.load_from_disk(tmp, device="cpu").eval()
    kept, kept_train = drop_outliers(hold_acts, cfg.outlier_norm), drop_outliers(acts, cfg.outlier_norm)
    quality = reconstruction(sae, kept)
    # a feature is dead when it fires on none of the tokens at hand: all of them, since a
    # held-out tenth alone (a few thousand tokens) leaves rare live features unseen
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    for x in (kept, kept_train):
        for s in range(0, len(x), 8192):
            fired |= (encode(sae, x[s : s + 8192]) > 0).any(0)
    quality.update({"dead_fraction": float(1 - fired.float().mean()), "dead_measured_on": "all corpus tokens",
                    "dead_fraction_held_out": quality["dead_fraction"],
                    "n_train_tokens": int(len(kept_train)),
                    "n_outlier_tokens": int(len(acts) + len(hold_acts) - len(kept) - len(kept_train)),
                    "n_train_sequences": len(train_seqs),
                    "n_held_out_sequences": len(hold_seqs), "corpus": {**corpus, "examples": examples}})
    (tmp / "quality.json").write_text(json.dumps(quality))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.replace(path)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return sae, "trained", quality


# ---------------------------------------------------------------- concept features


def concept_features(pf: Tensor, pr: Tensor, cfg: SAELensConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rank features by selectivity for forget prompts (``pf``/``pr``: per-prompt max codes)."""
    ff = (pf > 0).float().mean(0).numpy()
    fr = (pr > 0).float().mean(0).numpy()
    fall = (torch.cat([pf, pr]) > 0).float().mean(0).numpy()
    ok = (fall <= cfg.max_firing_rate) & (ff > fr)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(ff + fr > 0, ff / (ff + fr), 0.0)
        f1 = np.where(prec + ff > 0, 2 * prec * ff / (prec + ff), 0.0)
    if cfg.rule == "f1":
        score = np.where(ok & (prec >= cfg.min_precision), f1, -np.inf)
    else:
        score = np.where(ok & (fr <= cfg.retain_firing_max), ff, -np.inf)
    order = np.argsort(-score, kind="stable")
    keep = order[np.isfinite(score[order])][: cfg.n_features]
    return keep, {"forget_rate": ff, "retain_rate": fr, "f1": f1, "score": score}


def matched_controls(rate: np.ndarray, concept: np.ndarray, alive: np.ndarray, n_sets: int, seed: int,
                     exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """Random feature sets matching each concept feature's firing rate (among the 5 nearest alive features)."""
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.flatnonzero(alive), concept if exclude is None else np.union1d(concept, exclude))
    if len(pool) < len(concept):
        raise LensError(f"only {len(pool)} live non-concept features: too few for frequency-matched controls")
    sets = []
    for _ in range(n_sets):
        taken: set[int] = set()
        chosen = []
        for j in concept:
            cand = [c for c in pool[np.argsort(np.abs(np.log1p(rate[pool]) - np.log1p(rate[j])), kind="stable")]
                    if c not in taken][:5]
            c = int(rng.choice(cand))
            taken.add(c)
            chosen.append(c)
        sets.append(np.asarray(chosen))
    return sets


# -------------------------------------------------------------------------- the lens


class _Codes:
    """Token codes of each model on each item set, encoded by B's SAE."""

    def __init__(self, ctx: AuditContext, sae, hook: str) -> None:
        self.ctx, self.sae, self.hook = ctx, sae, hook
        self._c: dict[tuple[str, str], tuple[Tensor, np.ndarray]] = {}

    def tokens(self, role: str, item_set: str) -> tuple[Tensor, np.ndarray]:
        key = (role, item_set)
        if key not in self._c:
            m = self.ctx.models[role]
            seqs = [encode_prompt(m.tokenizer, it.prompt) for it in self.ctx.items[item_set]]
            acts, owner = token_acts(m, seqs, self.hook, self.ctx.config.batch_size)
            self._c[key] = (encode(self.sae, acts), owner)
        return self._c[key]

    def pooled(self, role: str, item_set: str) -> Tensor:
        c, owner = self.tokens(role, item_set)
        return _pooled_codes(c, owner, len(self.ctx.items[item_set]))

    def mean(self, role: str, item_set: str) -> Tensor:
        c, owner = self.tokens(role, item_set)
        return _mean_codes(c, owner, len(self.ctx.items[item_set]))


def _editor(sae, delta: Tensor, mask: Tensor):
    """Hook edit: replica ``r`` moves codes ``mask[r]`` by ``delta[r]``, through the decoder."""

    def edit(x: Tensor, rep: Tensor) -> Tensor:
        b, s, d = x.shape
        flat = x[:, 1:].reshape(-1, d)
        z = sae.encode(flat).float().view(b, s - 1, -1)
        dz = delta[rep].to(x.device)[:, None, :]
        m = mask[rep].to(x.device)[:, None, :]
        z2 = torch.where(m, torch.relu(z + dz), z)
        dx = (sae.decode(z2.reshape(-1, z.shape[-1])) - sae.decode(z.reshape(-1, z.shape[-1]))).float()
        out = x.clone()
        out[:, 1:] = out[:, 1:] + dx.view(b, s - 1, d)
        return out

    return edit


def _layer_of(hook_name: str | None) -> int | None:
    if hook_name and hook_name.startswith("blocks.") and hook_name.endswith("hook_resid_post"):
        try:
            return int(hook_name.split(".")[1])
        except ValueError:
            return None
    return None


@register_lens("sae", SAELensConfig, SAEData, "SAE concept features: survival in U and feature-steering restoration")
def sae_lens(ctx: AuditContext, cfg: SAELensConfig) -> LensResult:
    """Concept features of B's SAE: their survival in U and N, and restoration by moving them."""
    forget, retain = ctx.items["forget"], ctx.items["retain"]
    B, U = ctx.models["base"], ctx.models["unlearned"]
    ends = ["base", *ctx.reference_roles]
    metric = cfg.metric
    n_layers = ctx.n_layers
    notes: list[str] = []

    # ---- the SAE
    texts = _read_text(cfg.text)
    prompts = [it.prompt for it in [*forget, *retain]]
    corpus_seqs, corpus, identity = _corpus(ctx, cfg, texts, prompts)

    def training_data() -> tuple[list[list[int]], list[list[int]], list[str]]:
        extra = corpus_seqs()
        seqs = [s for s in [*(encode_prompt(B.tokenizer, p) for p in prompts), *extra] if len(s) > 1]
        held = np.random.default_rng(ctx.seed).random(len(seqs)) < cfg.holdout
        return ([s for s, h in zip(seqs, held, strict=True) if not h], [s for s, h in zip(seqs, held, strict=True) if h],
                corpus_summary(extra, B.tokenizer))

    layer = cfg.layer
    if cfg.sae_path is not None and layer is None:
        try:
            meta = json.loads((Path(cfg.sae_path) / "cfg.json").read_text()).get("metadata") or {}
        except (OSError, ValueError):
            meta = {}
        layer = _layer_of(meta.get("hook_name"))
    if layer is None:
        layer = n_layers // 2
    if not 0 <= layer < n_layers:
        raise LensError(f"SAE layer {layer} is out of range: the model has {n_layers} blocks")
    hook = f"blocks.{layer}.hook_resid_post"
    key = _train_key(B, hook, cfg, [*identity, *prompts]) + f"-s{ctx.seed}"
    sae, source, quality = get_sae(ctx, cfg, hook, training_data, key, corpus)
    if sae.cfg.d_in != B.d_model:
        raise LensError(f"the SAE reads {sae.cfg.d_in}-dimensional activations; the model's residual has {B.d_model}")
    sae.requires_grad_(False)

    if quality is None:  # a loaded SAE: measured on the audit prompts and any text given
        seqs = [s for s in (encode_prompt(B.tokenizer, t) for t in [*prompts, *texts]) if len(s) > 1]
        quality = reconstruction(sae, drop_outliers(token_acts(B, seqs, hook, ctx.config.batch_size)[0],
                                                    cfg.outlier_norm))
        quality.update({"n_train_tokens": None, "corpus": {"source": "pretrained (sae_path)"}})
    quality.update({"source": source, "d_sae": int(sae.cfg.d_sae), "architecture": sae.cfg.architecture(),
                    "held_out": source != "loaded", "min_explained_variance": cfg.min_explained_variance,
                    "ok": quality["explained_variance"] >= cfg.min_explained_variance})
    if not quality["ok"]:
        notes.append(f"the SAE explains only {quality['explained_variance']:.2f} of the activation variance "
                     f"(< {cfg.min_explained_variance}): its features are a poor description of the residual, so "
                     "this lens is uninformative and its recovery does not count toward the verdict")

    # ---- concept features on B
    codes = _Codes(ctx, sae, hook)
    pf, pr = codes.pooled("base", "forget"), codes.pooled("base", "retain")
    concept, sel = concept_features(pf, pr, cfg)
    if len(concept) == 0:
        notes.append(f"no SAE feature fires selectively on forget prompts in the base model (rule {cfg.rule}): "
                     "there are no concept features to follow, so this lens reports no recovery")
        return LensResult(name="sae", config=cfg.model_dump(), data={
            "layer": layer, "hook": hook, "metric": metric, "quality": quality, "concept_features": []}, notes=notes)
    all_codes, _ = codes.tokens("base", "forget")
    alive = ((torch.cat([pf, pr]) > 0).any(0)).numpy()
    found = concept
    if cfg.placebo:
        concept = matched_controls(sel["forget_rate"], found, alive, 1, ctx.seed + 104729)[0]
        notes.append("placebo run: the 'concept' features are a frequency-matched random set, not the selective ones")

    # ---- survival: mean pooled code on forget prompts, U and N against B
    act = {role: codes.pooled(role, "forget")[:, concept].mean(0).numpy() for role in ctx.roles}
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = {role: (act[role] / act["base"]).tolist() for role in ctx.roles}
    total = {role: float(act[role].sum() / act["base"].sum()) for role in ctx.roles}

    # ---- restoration, cross-fitted over subject folds
    fold_f = subject_folds(forget, cfg.folds, ctx.seed)
    fold_r = subject_folds(retain, cfg.folds, ctx.seed + 1)
    require_folds(fold_f, cfg.folds, "the SAE lens")
    ctrl_sets = matched_controls(sel["forget_rate"], concept, alive, cfg.n_controls, ctx.seed + 7919, exclude=found)
    feature_sets = [concept, *ctrl_sets]
    d_sae = int(sae.cfg.d_sae)
    pool_fn = codes.pooled if cfg.shift == "prompt_max" else codes.mean
    mean_codes = {role: pool_fn(role, "forget") for role in ctx.roles}

    def shift(role: str, e: int) -> Tensor:
        """Mean code shift B − role over the forget prompts of the folds other than ``e``."""
        fit = torch.from_numpy(np.flatnonzero(fold_f != e))
        return (mean_codes["base"][fit] - mean_codes[role][fit]).mean(0)

    def replicas(role: str, e: int, scales: Sequence[float], sets: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        sh = shift(role, e)
        delta = torch.zeros(len(scales) * len(sets), d_sae)
        mask = torch.zeros(len(scales) * len(sets), d_sae, dtype=torch.bool)
        r = 0
        for s in scales:
            for fs in sets:
                idx = torch.from_numpy(fs).long()
                delta[r, idx] = s * sh[idx]
                mask[r, idx] = True
                r += 1
        return delta, mask

    scales = sorted({float(s) for s in cfg.scales if s > 0})
    if not scales:
        raise LensError("the SAE lens needs at least one positive scale")
    # unrestored scores (shared with the behavior lens) and the knowledge-free end point
    before = unedited(ctx, metric)
    plain, plain_retain_u, b, n_plain, gap = before.forget, before.retain_unlearned, before.base, before.end, before.gap
    n_f, n_r, n_sets = len(forget), len(retain), len(feature_sets)
    u_sc = {s: {"accuracy": np.zeros(n_f), "soft": np.zeros(n_f)} for s in scales}
    ctrl = {s: np.zeros((cfg.n_controls, n_f)) for s in scales}
    u_ret = {s: np.zeros(n_r) for s in scales}
    with progress("SAE restoration", total=cfg.folds) as bar:
        for e in range(cfg.folds):
            idx_f, idx_r = np.flatnonzero(fold_f == e), np.flatnonzero(fold_r == e)
            delta, mask = replicas("unlearned", e, scales, feature_sets)
            prep = PreparedItems(U, [forget[i] for i in idx_f])
            met = item_metrics(prep.logprobs(hook, None, None, cfg.tokens_per_pass, edit=_editor(sae, delta, mask),
                                             n_replicas=len(delta)), ctx.temperature("unlearned"))
            for j, s in enumerate(scales):
                r0 = j * n_sets
                for name in ("accuracy", "soft"):
                    u_sc[s][name][idx_f] = met[name][r0]
                ctrl[s][:, idx_f] = met[metric][r0 + 1 : r0 + n_sets]
            if len(idx_r):
                d1, m1 = replicas("unlearned", e, scales, [concept])
                prep_r = PreparedItems(U, [retain[i] for i in idx_r])
                ret = item_metrics(prep_r.logprobs(hook, None, None, cfg.tokens_per_pass, edit=_editor(sae, d1, m1),
                                                   n_replicas=len(d1)))["accuracy"]
                for j, s in enumerate(scales):
                    u_ret[s][idx_r] = ret[j]
            bar.advance(1)

    # choose, for each fold, the scale that does best on the other folds (audit/crossfit.py); ties go to
    # the earliest candidate, the smallest scale
    sweep = Sweep(candidates=scales, score={s: u_sc[s][metric] for s in scales},
                  accuracy={s: u_sc[s]["accuracy"] for s in scales}, controls=ctrl, retain=u_ret,
                  retain_plain=plain_retain_u, tolerance=cfg.side_effect_tolerance)
    chosen = sweep.choose(fold_f, fold_r, cfg.folds)

    oof = sweep.out_of_fold(chosen, fold_f, fold_r)
    u, ret_st = oof.score, oof.retain

    def restore(role: str, s: float, e: int) -> Callable[[PreparedItems], Tensor] | None:
        d1, m1 = replicas(role, e, [s], [concept])
        if not bool(d1.abs().sum() > 0):  # the model's codes do not differ from B's: no edit
            return None
        return lambda prep: prep.logprobs(hook, None, None, cfg.tokens_per_pass, edit=_editor(sae, d1, m1),
                                          n_replicas=1)

    restored = per_fold_scores(ctx, ends, forget, fold_f, chosen, metric, plain, restore)

    n_st = np.stack([restored[r] for r in ctx.reference_roles]) if ctx.has_reference else n_plain
    label = ", ".join(f"×{s:g}" for s in chosen)
    rec, ctrl_r, drop = edited_recovery(ctx, base=b, end=n_plain, end_edited=n_st, oof=oof,
                                        retain_plain=plain_retain_u, tolerance=cfg.side_effect_tolerance,
                                        n_boot=cfg.n_boot,
                                        reading=f"SAE feature restoration @ L{layer} (cross-fitted scale {label})")
    rec = rec.model_copy(update={"informative": rec.informative and quality["ok"]})
    per_item = edited_per_item(ctx, base=b, end=n_plain, end_edited=n_st, oof=oof, reading=rec.reading)

    curve = [{"scale": s, **sweep.curve_row(s, float(n_plain.mean()), gap)} for s in scales]

    fr_all = (all_codes > 0).float().mean(0).numpy()
    data = {
        "layer": layer, "hook": hook, "metric": metric, "quality": quality,
        "concept_features": [
            {"feature": int(j), "forget_rate": float(sel["forget_rate"][j]), "retain_rate": float(sel["retain_rate"][j]),
             "f1": float(sel["f1"][j]), "token_rate": float(fr_all[j]),
             "forget_mean": float(pf[:, j].mean()), "retain_mean": float(pr[:, j].mean()),
             **{f"survival_{role}": float(survival[role][i]) for role in ctx.roles}}
            for i, j in enumerate(concept)
        ],
        "selectivity": {"forget_mean": float(pf[:, concept].mean()), "retain_mean": float(pr[:, concept].mean())},
        "survival": {"per_feature": survival, "total": total},
        "dose_response": curve,
        "chosen": sweep.chosen_rows(chosen, fold_f, fold_r, lambda s: {"scale": s}),
        "restored": {"unlearned": float(u.mean()), **{role: float(restored[role].mean()) for role in ends},
                     "retain_accuracy_unlearned": float(ret_st.mean()), "retain_drop": drop,
                     "control_recoveries": [float(x) for x in ctrl_r]},
        "unrestored": {"forget": {role: float(plain[role][metric].mean()) for role in ctx.roles},
                       "retain_accuracy_unlearned": float(plain_retain_u.mean())},
        "per_item": per_item,
    }
    notes += [
        f"SAE ({quality['architecture']}, {quality['d_sae']} features, {source}) at {hook}: explained variance "
        f"{quality['explained_variance']:.3f}, L0 {quality['l0']:.1f} "
        + ("on held-out sequences" if quality["held_out"] else "on the audit prompts")
        + f", dead {quality['dead_fraction']:.1%} (over {quality.get('dead_measured_on') or 'the same tokens'})"
        + (f"; trained on {quality['n_train_tokens']} tokens ({quality['corpus']['source']} and the audit prompts)"
           if quality.get("n_train_tokens") else ""),
        f"{len(concept)} concept features by the {cfg.rule} rule; survival = U's (N's) mean per-prompt max code on "
        "forget prompts over B's, U's activations encoded by B's SAE",
        f"restoration: codes moved by the mean B − U shift of the other folds × scale, added as dec(z') − dec(z) "
        f"(error term kept); controls: {cfg.n_controls} frequency-matched random feature sets per scale",
    ]
    notes += ctx.no_reference_notes("the end point is chance and cannot be restored")
    return LensResult(name="sae", config=cfg.model_dump(), recoveries=[rec], data=data, notes=notes)
