"""Training: data formats and masking, packing, the bundled dates task, schedules and the trainer loop."""
from .adamw8bit import AdamW8bit
from .arguments import TrainingArguments, TrainingError
from .checkpoints import latest_checkpoint
from .data import (
                   IGNORE_INDEX,
                   DataError,
                   Example,
                   build_examples,
                   check_examples,
                   chunk_text,
                   collate,
                   count_trained_tokens,
                   load_examples,
                   mask_prompt,
                   read_records,
                   to_messages,
                   tokenize_messages,
)
from .packing import collate_packed, pack_examples
from .schedules import SCHEDULES, lr_multiplier
from .trainer import Trainer

__all__ = ["AdamW8bit", "IGNORE_INDEX", "DataError", "Example", "build_examples", "check_examples", "chunk_text",
           "collate", "count_trained_tokens",
           "load_examples", "mask_prompt", "read_records", "to_messages", "tokenize_messages", "collate_packed", "pack_examples",
           "SCHEDULES", "lr_multiplier", "Trainer", "TrainingArguments", "TrainingError", "latest_checkpoint"]
