"""Talking to the chat model behind the `llm` strategy: prompts, client and answer parsing.

Kept apart from `llm_evo.strategies.llm` so the HTTP details (response-format ladder,
backoff, timeouts) and the lenient JSON handling can be tested on their own.
"""

from llm_evo.llm.client import ChatClient, Completion, LLMCallError
from llm_evo.llm.parse import AnswerError, extract_json, parse_answer
from llm_evo.llm.prompts import Layout, PromptTemplates

__all__ = [
    "AnswerError",
    "ChatClient",
    "Completion",
    "LLMCallError",
    "Layout",
    "PromptTemplates",
    "extract_json",
    "parse_answer",
]
