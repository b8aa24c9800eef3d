"""fourdfy: text-to-4D generation (a re-implementation of 4D-fy). See ``docs/design.md`` for the map of the code."""

import fourdfy.catalog  # noqa: F401  (declares the built-in module types; imports nothing heavy)
