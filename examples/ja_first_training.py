"""はじめての学習：教材ノートブックの CNN を、convkit に同梱の MNIST サンプルで学習します。

ドキュメントの「はじめての学習」（docs/getting-started.ja.md）は、このスクリプトを
区切りごとにそのまま載せています。上から順に、データ、モデル、学習、評価、学習曲線、
フィルター、特徴マップ、Grad-CAM です。図は --out のフォルダーに保存します。ドキュメントの
図は --device cpu --out docs/img/first-training で描いたものです。

    pip install "torch-convkit[plot]"
    python examples/ja_first_training.py
    python examples/ja_first_training.py --epochs 1 --out /tmp/figures --device cpu
"""

# --8<-- [start:settings]
import argparse
from pathlib import Path

import torch

from convkit import build_cnn, evaluate, fit, mnist_sample, predict, summary, viz

parser = argparse.ArgumentParser(description="はじめての学習")
parser.add_argument("--epochs", type=int, default=5, help="学習のエポック数")
parser.add_argument("--out", type=Path, default=Path("figures"), help="図の保存先")
parser.add_argument("--device", default="auto", help="auto、cpu、cuda、mps")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
# --8<-- [end:settings]

# --8<-- [start:data]
train = mnist_sample(train=True)  # 学習用 4,000 枚
test = mnist_sample(train=False)  # テスト用 1,000 枚
images, labels = test.tensors
print(len(train), len(test))
print(images.shape, images.dtype, labels[:10].tolist())
# --8<-- [end:data]

# --8<-- [start:model]
torch.manual_seed(0)  # 重みの初期値を毎回同じにする
model = build_cnn(
    (1, 28, 28),  # 入力：1 チャネル、28×28 画素
    10,  # 出力：0〜9 の 10 クラス
    channels=(32, 64),  # 畳み込みブロック 2 つの出力チャネル数
    kernel_size=5,
    padding="valid",  # パディングなし：28 → 24 → (プーリング) 12 → 8 → 4
    order="conv-pool-act-norm-dropout",  # ノートブックと同じ層の順番
    dropout=0.25,
    hidden=(200,),  # 全結合の隠れ層 1 つ（200 ユニット）
    head_norm="batch",
    head_dropout=0.25,
)
print(summary(model))
# --8<-- [end:model]

# --8<-- [start:fit]
history = fit(model, train, epochs=args.epochs, val_data=test, device=args.device, seed=0)
# --8<-- [end:fit]

# --8<-- [start:evaluate]
scores = evaluate(model, test, device=history.device)
print(f"テストデータの正解率 {scores['accuracy']:.3f}、損失 {scores['loss']:.3f}")
predicted = predict(model, images[:10], device=history.device).argmax(dim=1)
print("予測:", predicted.tolist())
print("正解:", labels[:10].tolist())
# --8<-- [end:evaluate]

# --8<-- [start:curves]
fig = history.plot()  # 損失と正解率の学習曲線（学習データと検証データ）
fig.savefig(args.out / "curves.png")
# --8<-- [end:curves]

# --8<-- [start:filters]
fig = viz.plot_filters(model)  # 第 1 層の 32 枚の 5×5 フィルター
fig.savefig(args.out / "filters.png")
# --8<-- [end:filters]

# --8<-- [start:feature-maps]
digits = torch.stack([images[labels == d][0] for d in range(8)])  # 数字 0〜7 を 1 枚ずつ
fig = viz.plot_feature_maps(model, digits[4], max_channels=12)  # 数字「4」の特徴マップ
fig.savefig(args.out / "feature-maps.png")
# --8<-- [end:feature-maps]

# --8<-- [start:grad-cam]
fig = viz.plot_grad_cam(model, digits)  # 予測したクラスの根拠となった領域
fig.savefig(args.out / "grad-cam.png")
print(sorted(path.name for path in args.out.glob("*.png")))
# --8<-- [end:grad-cam]
