"""Deterministic, realistic training-log text for the simulator.

Real ModelArts task logs mix the platform's ``[ModelArts Service Log]`` lines with the user's own
output: Python logging, progress lines, Chinese text, emoji, CRLF from Windows-authored scripts,
tracebacks and the occasional enormous line (a config or tensor dump). Every one of these breaks a
naive line splitter or a byte-range reader, so the simulator serves all of them, seeded so that a
failing test can be replayed.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

BASE_TIME = datetime(2024, 5, 18, 14, 28, 13, tzinfo=timezone(timedelta(hours=8)))

_CHINESE = (
    "数据集加载完成，共 {n} 条样本",
    "开始第 {e} 轮训练",
    "模型权重已保存到 /home/ma-user/modelarts/outputs/ckpt-{e}.pth",
    "梯度裁剪已触发，梯度范数 {f}",
    "验证集准确率 {f}%，最佳模型已更新",
    "训练作业运行中，请耐心等待",
)
_EMOJI = ("🚀", "🔥", "✅", "⚠️", "📦", "🎉", "🐍", "💾")
_WARNINGS = (
    "UserWarning: This DataLoader will create 8 worker processes in total.",
    "torch.cuda.amp.GradScaler is enabled, but CUDA is not available.",
    "Learning rate scheduler step() called before optimizer step().",
    "梯度出现 NaN，跳过本步 ⚠️",
)
_ERRORS = (
    "Failed to connect to OBS, retrying in 5s (attempt {n}/3)",
    "NCCL WARN Call to connect returned Connection refused, retrying",
    "读取数据分片失败：obs://bucket/data/part-{n}.tfrecord",
)
_SERVICE = (
    "collect and upload logs end at {ts}",
    "[sidecar] wait python processes exit...",
    "output-handler finalizing due to: [training finished]",
    "input-handler downloading data from obs://modelarts-data/{n}/",
    "[sidecar] running at {ts}",
)
_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/home/ma-user/modelarts/user-job-dir/code/train.py", line 212, in <module>\n'
    "    main()\n"
    '  File "/home/ma-user/modelarts/user-job-dir/code/train.py", line 187, in main\n'
    "    loss = model(batch)  # 前向计算\n"
    '  File "/home/ma-user/anaconda3/lib/python3.9/site-packages/torch/nn/modules/module.py", line 1501, '
    "in _call_impl\n"
    "    return forward_call(*args, **kwargs)\n"
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 31.75 GiB total capacity) 💥\n"
)


class LogGenerator:
    """Produces log lines from a seed; the same seed always gives the same bytes.

    ``long_line_prob`` is the chance per line of a line longer than ``long_line_bytes`` (default
    300 KiB, above Loki's 256 KiB limit); ``crlf_prob`` the chance of a CRLF ending;
    ``traceback_prob`` the chance of a multi-line Python traceback.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        long_line_prob: float = 0.00002,
        long_line_bytes: int = 300 * 1024,
        crlf_prob: float = 0.05,
        traceback_prob: float = 0.005,
        step_ms: int = 37,
    ) -> None:
        self._rng = random.Random(seed)
        self.long_line_prob = long_line_prob
        self.long_line_bytes = long_line_bytes
        self.crlf_prob = crlf_prob
        self.traceback_prob = traceback_prob
        self._step = timedelta(milliseconds=step_ms)
        self._now = BASE_TIME
        self._epoch = 1
        self._step_no = 0
        self._pool: list[bytes] | None = None
        self._pool_mean = 1.0

    @property
    def rng(self) -> random.Random:
        """The seeded source of every choice, for callers that add their own (e.g. event timing)."""
        return self._rng

    def _ts(self) -> str:
        self._now += self._step
        return self._now.strftime("%Y/%m/%d %H:%M:%S,") + f"{self._now.microsecond // 1000:03d}"

    def _fill(self, template: str) -> str:
        rng = self._rng
        return template.format(n=rng.randint(1, 99999), e=self._epoch, f=f"{rng.uniform(0, 100):.2f}", ts=self._ts())

    def _progress(self) -> str:
        self._step_no += 1
        if self._step_no > 500:
            self._step_no = 1
            self._epoch += 1
        loss = 2.5 / (self._epoch + self._step_no / 500)
        return (
            f"{self._ts()} - INFO - epoch {self._epoch}/100 step {self._step_no}/500 "
            f"loss={loss:.4f} lr=1.0e-04 throughput={self._rng.randint(800, 1200)} samples/s"
        )

    def long_line(self) -> str:
        """One line longer than ``long_line_bytes``: a config dump with multi-byte characters."""
        parts = []
        size = 0
        i = 0
        while size <= self.long_line_bytes:
            piece = f'"layer_{i}": {{"name": "卷积层{i}", "shape": [{i % 7 + 1}, 3, 3], "note": "🔥"}}, '
            parts.append(piece)
            size += len(piece.encode())
            i += 1
        return f"{self._ts()} - INFO - model config dump: {{" + "".join(parts) + "}"

    def line(self) -> str:
        """One log entry with its line ending (a traceback is several lines)."""
        rng = self._rng
        r = rng.random()
        if r < self.traceback_prob:
            return f"{self._ts()} - ERROR - training step failed\n" + _TRACEBACK
        if r < self.traceback_prob + self.long_line_prob:
            text = self.long_line()
        elif r < 0.45:
            text = self._progress()
        elif r < 0.60:
            text = f"[ModelArts Service Log][INFO][{self._ts()}]: " + self._fill(rng.choice(_SERVICE))
        elif r < 0.75:
            text = f"{self._ts()} - INFO - " + self._fill(rng.choice(_CHINESE))
        elif r < 0.83:
            text = f"{self._ts()} - INFO - {rng.choice(_EMOJI)} " + self._fill(rng.choice(_CHINESE))
        elif r < 0.92:
            text = f"{self._ts()} - WARNING - " + rng.choice(_WARNINGS)
        else:
            text = f"{self._ts()} - ERROR - " + self._fill(rng.choice(_ERRORS))
        ending = "\r\n" if rng.random() < self.crlf_prob else "\n"
        return text + ending

    def chunk(self, nbytes: int) -> bytes:
        """Complete lines adding up to at least ``nbytes`` bytes."""
        out: list[bytes] = []
        size = 0
        while size < nbytes:
            encoded = self.line().encode()
            out.append(encoded)
            size += len(encoded)
        return b"".join(out)

    def bulk(self, nbytes: int) -> bytes:
        """Like :meth:`chunk` but ~20x faster: lines drawn from a pool made once (benchmark volumes).

        Timestamps in the pool do not advance; everything else (CRLF, multi-byte text,
        tracebacks) is as realistic as :meth:`chunk`.
        """
        if self._pool is None:
            long_prob, self.long_line_prob = self.long_line_prob, 0.0
            self._pool = [self.line().encode() for _ in range(4096)]
            self.long_line_prob = long_prob
            self._pool_mean = sum(map(len, self._pool)) / len(self._pool)
        out: list[bytes] = []
        size = 0
        while size < nbytes:
            k = max(1, int((nbytes - size) / self._pool_mean) + 1)
            picked = self._rng.choices(self._pool, k=k)
            if self._rng.random() < self.long_line_prob * k:
                picked.append((self.long_line() + "\n").encode())
            out += picked
            size += sum(map(len, picked))
        return b"".join(out)

    def event_message(self, task: str = "worker-0") -> tuple[str, str, str]:
        """A plausible training-job event: ``(message, level, source)``."""
        rng = self._rng
        choice = rng.randrange(6)
        if choice == 0:
            return f"[{task}] Training output(parameter name: train_url) Uploading.", "Info", "Task"
        if choice == 1:
            return f"[Pod: modelarts-job-{task}] Started: Started container", "Info", "K8S"
        if choice == 2:
            return f"[{task}] 训练进度 epoch {self._epoch} 完成 ✅", "Info", "Task"
        if choice == 3:
            return f"[{task}] GPU 利用率过低 (utilization {rng.randint(1, 20)}%)", "Warning", "Task"
        if choice == 4:
            return f"[Pod: modelarts-job-{task}] BackOff: Back-off restarting failed container", "Warning", "K8S"
        return "Training job is running.", "Info", "Job"
