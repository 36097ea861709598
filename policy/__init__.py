"""The policy shipped with flowaudit, as versioned YAML data files (no code).

`DEFAULT_POLICY_DIR` is where `FLOWAUDIT_POLICY_DIR` points when it is unset.
"""

from pathlib import Path

DEFAULT_POLICY_DIR = Path(__file__).resolve().parent
