"""Demo and benchmark generators, fenced off from the core: the demo corpus (``corpus``), synthetic
clips with known motion (``synthetic_video``) and the motion-sensitive benchmark (``motion_bench``).
They use the core; the core never imports them (``python -m curate demo-corpus`` and
``motion-bench`` reach them from the command line only)."""
