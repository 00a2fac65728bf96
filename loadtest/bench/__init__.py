"""The article's experiment, measured on the compose stack, and more (`python -m loadtest.bench`).

In one run, so that every ratio compares numbers taken side by side on the same machine:
  ceiling.py  Pillow alone flipping the sample, one process per core, no HTTP: the ceiling;
  burst.py    the article's burst: 10 concurrent POST /flip of the 24 MP sample;
  run.py      for each replica count, the burst and headless locust runs at each user count,
              with the CPU each part used (cpu.py); one replica flipping T at once against T
              replicas (does the GIL matter); light requests while every queue is full, and
              what nginx adds to GET / (latency.py);
  report.py   summary.json as text, and as the tables of docs/results.md;
  plots.py    the PNG plots.
"""
