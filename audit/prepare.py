"""Items prepared for the base model: chat-template wrapping and dropping the facts it does not know."""

from __future__ import annotations

from collections.abc import Sequence

from audit.errors import InputError
from audit.items import ItemSet, KnowledgeItem

CHAT_MODES = ("auto", "none")


def apply_chat_template(items: Sequence[KnowledgeItem], tokenizer, mode: str = "none") -> tuple[list[KnowledgeItem], bool]:
    """Wrap each prompt as one user message of the checkpoint's chat template.

    With ``mode="auto"`` and a tokenizer that has a chat template, the user's message is
    the item's bare ``question`` (else its ``prompt``) and the prompt becomes the
    rendered conversation up to the assistant's turn (``add_generation_prompt``), so the
    answer is what the assistant says. A leading BOS string is dropped when the tokenizer
    adds BOS itself, so it is not doubled. Returns the items and whether they were wrapped.

    Raises:
        InputError: an unknown mode, or a template that fails to render.
    """
    if mode not in CHAT_MODES:
        raise InputError(f"unknown chat-template mode '{mode}'; choose one of {', '.join(CHAT_MODES)}")
    if mode == "none" or not getattr(tokenizer, "chat_template", None):
        return list(items), False
    bos: str = getattr(tokenizer, "bos_token", None) or ""
    adds_bos = bool(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    out = []
    for it in items:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": it.question or it.prompt}],
                                                 tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - jinja raises its own error types
            raise InputError(f"the chat template failed on item '{it.id}': {e}") from None
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        out.append(it.model_copy(update={"prompt": text}))
    return out, True


def known_mask(model, items: Sequence[KnowledgeItem], *, batch_size: int = 32):
    """Which items ``model`` (a :class:`~audit.models.LoadedModel`) ranks correctly."""
    from audit.scoring import score_items  # torch: only once a model is at hand (`items check` without --base has none)

    return score_items(model.forward, model.tokenizer, items, batch_size=batch_size, device=model.device).correct


def prepare_for_model(sets: dict[str, ItemSet], items: dict[str, list[KnowledgeItem]], base, *,
                      chat_template: str = "none", drop_unknown: bool = False,
                      batch_size: int = 32) -> dict[str, list[KnowledgeItem]]:
    """Steps that need the base model: chat-template wrapping, then (optionally) dropping
    items the base does not know, since no lens can find knowledge that was never there.
    Records what was done on each :class:`ItemSet`."""
    out = {}
    for k, its in items.items():
        its, wrapped = apply_chat_template(its, base.tokenizer, chat_template)
        s = sets[k]
        s.chat_template = wrapped
        if wrapped:
            s.notes.append("prompts wrapped with the checkpoint's chat template")
        elif chat_template == "auto":
            s.notes.append("--chat-template auto: the checkpoint has no chat template; prompts used as they are")
        if drop_unknown:
            mask = known_mask(base, its, batch_size=batch_size)
            s.n_dropped = int((~mask).sum())
            if s.n_dropped:
                s.notes.append(f"{s.n_dropped} of {len(its)} items the base model does not know were dropped")
            its = [it for it, ok in zip(its, mask, strict=True) if ok]
        out[k] = its
    return out
