"""The `llm` strategy: a chat model as the evolution strategy, and its helpers.

`strategy.py` holds the ask/tell logic (`LLMStrategy`); `client.py` the HTTP details
(response-format ladder, backoff, timeouts, key redaction); `parse.py` the lenient JSON
extraction and strict validation of answers; `prompts.py` and `prompts/*.txt` how a genome
is shown to the model. Kept apart so each can be tested on its own.
"""

from llm_evo.strategies.llm.client import ChatClient, Completion, LLMCallError
from llm_evo.strategies.llm.parse import AnswerError, extract_json, parse_answer
from llm_evo.strategies.llm.prompts import Layout, PromptTemplates
from llm_evo.strategies.llm.strategy import LLMStrategy

__all__ = [
    "AnswerError",
    "ChatClient",
    "Completion",
    "LLMCallError",
    "LLMStrategy",
    "Layout",
    "PromptTemplates",
    "extract_json",
    "parse_answer",
]
