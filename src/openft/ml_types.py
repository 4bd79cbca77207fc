"""Names for the ML objects that openft's functions pass around, for
annotations only: nothing here is imported at run time, so the API process
that imports a module using them never imports torch or transformers.

``Model`` is a causal language model as transformers loads it, or the PEFT
model that wraps it with a LoRA adapter; ``Tokenizer`` is its tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    Model: TypeAlias = PreTrainedModel | PeftModel
    Tokenizer: TypeAlias = PreTrainedTokenizerBase
