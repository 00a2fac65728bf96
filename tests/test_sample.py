from service.sample import load_sample, make_sample
from tests.pictures import decode


def test_sample_is_the_articles_size():
    data = make_sample()
    im = decode(data)
    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (6000, 4000))
    assert 6_000_000 <= len(data) <= 8_000_000


def test_sample_is_deterministic():
    assert make_sample(600, 400) == make_sample(600, 400)
    assert make_sample(600, 400, seed=1) != make_sample(600, 400, seed=2)


def test_load_sample_prefers_the_baked_file(tmp_path):
    baked = tmp_path / "sample.jpg"
    baked.write_bytes(make_sample(60, 40))
    assert load_sample(str(baked)) == baked.read_bytes()
    assert decode(load_sample(str(tmp_path / "missing.jpg"))).size == (6000, 4000)
