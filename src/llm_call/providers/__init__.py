"""Providers: one :class:`~llm_call.providers.base.Provider` per way of reaching models.

The router (:mod:`.router`) maps a model string to one; each provider imports its SDK lazily.
"""
