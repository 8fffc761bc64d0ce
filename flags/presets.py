"""Presets: named changes to Config's defaults. A flag given on the command line (or in a --flagfile) wins.

quick  minutes on 2 CPU cores: the default, and Config's own defaults (so it changes nothing); synthetic
       data, 48 px inputs, the paper's /8 student (add --students=2,4,8 for Table 2's three widths);
       verification runs the joint triplet + softmax variant (Table 5; add --verify_softmax=off,on for
       Table 4 too). The short-run recipe: AdamW with warm-up and cosine decay, the spatial landmark head
       (docs/recipe.md has the measurements).
smoke  seconds, for tests: quick on tiny synthetic data, 32 px, one epoch per stage, a ResNet of one block
       per stage (the plumbing is ResNet-50's; building and tracing 50 layers was most of a test's time).
paper  the paper's hyper-parameters (Section 5): 224 px crops of 256 px images, batch 256/64/128,
       Nesterov SGD 0.1 from scratch / 0.01 when initialized, ÷10 every 30 epochs, 60 epochs, τ = 3, the
       pooled landmark regression R = fc(K).

Values are written as on the command line (lists as lists of strings).
"""

PRESETS = {
    "quick": {},
    "smoke": dict(
        image_size=32, resnet_blocks=["1", "1", "1", "1"], batch_size=16, align_batch_size=16, ids_per_batch=4,
        teacher_epochs=1, student_epochs=1, transfer_epochs=1, teacher_transfer_epochs=0,
        pretrain_transfer_epochs=0, pretrain_epochs=1, synthetic_identities=8, synthetic_images=16,
        synthetic_size=40, verify_softmax=["off", "on"]),
    "paper": dict(
        image_size=224, students=["2", "4", "8"], batch_size=256, align_batch_size=64, ids_per_batch=32,
        images_per_id=4, teacher_epochs=60, student_epochs=60, fitnet_epochs=10, transfer_epochs=60,
        teacher_transfer_epochs=0, pretrain_transfer_epochs=0, pretrain_epochs=60, lr_scratch=0.1, lr_init=0.01,
        lr_transfer=0.0, lr_decay_epochs=30, lr_decay_factor=0.1, temperature=3.0, tau2=False, margin=0.4,
        verify_softmax=["off", "on"], synthetic_identities=500, synthetic_images=100, synthetic_size=256,
        optimizer="sgd", lr_schedule="step", warmup_epochs=0.0, weight_decay=1e-4, landmark_head="pooled"),
}
