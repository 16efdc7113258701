"""What alignment did, measured: `align eval` (held-out preference and SFT metrics, task accuracy,
sample generations, long-context checks), verifiable preference data (`align make-prefs`), reports."""
