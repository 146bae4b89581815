"""``python -m search_e1.demo_world --out DIR [--seed S] [--size N]`` (see `main`)."""

from search_e1.demo_world import main

main()
