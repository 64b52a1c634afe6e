"""Decoding processes (`jobs.window_workers`): a process killed in the middle of sending a window
fails its video and is replaced; the run neither hangs nor loses the other videos."""
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from p3d_keras.jobs import synthetic

CRASH = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time
    from p3d_keras.jobs import window_workers
    from p3d_keras.jobs.video_windows import WindowPlan
    from p3d_keras.tfrecords_tools import video

    if __name__ == "__main__":
        work, first, second = sys.argv[1:]
        tasks = [window_workers.Task(0, first), window_workers.Task(1, second)]
        stream = window_workers.messages(tasks, window_workers.FrameGeometry(182, 160), WindowPlan(16, stride=1),
                                         video.DecodeOptions(), workers=1, work=work, queue_size=2)
        killed, ends = False, []
        for kind, number, payload in stream:
            if kind == "window" and not killed:
                time.sleep(1.0)  # the queue fills; the process blocks in the middle of sending a 1.2 MB window
                for process in multiprocessing.active_children():
                    os.kill(process.pid, signal.SIGKILL)
                killed = True
            elif kind != "window":
                ends.append((kind, number, str(payload)))
        print(ends)
""")


def test_a_process_killed_while_sending_fails_its_video_and_the_run_goes_on(tmp_path):
    videos = []
    for i in range(2):
        path = tmp_path / f"{i}.mp4"
        clip = synthetic.render_clip("move_left", np.random.default_rng(i), frames=40, size=200)
        synthetic.write_video(path, clip)
        videos.append(str(path))
    (tmp_path / "work").mkdir()
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "work"), *videos], capture_output=True,
                         text=True, timeout=240, cwd=pathlib.Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    ends = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 (our own script's repr of a list)
    assert ends[0][:2] == ("failed", 0) and "crashed" in ends[0][2]
    assert [end[:2] for end in ends[1:]] == [("done", 1)]
