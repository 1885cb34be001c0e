"""Money on the wire: integer micro-USDC (1 USDC = 1,000,000), given as a JSON integer.

Pydantic's lax mode would take ``"1"``, ``1.0`` and ``true`` as the amount 1; for money a
value that is not already an integer is a client bug to refuse (422), never to guess.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Strict

Micro = Annotated[int, Strict()]
"""An amount of micro-USDC in a request body: a JSON integer, nothing else (no strings,
no booleans, no floats). Add bounds with ``Field(ge=…, le=…)`` beside it."""
