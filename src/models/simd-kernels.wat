;; BatchNorm and ReLU passes and channel moves over NHWC activations in TF.js's own WASM memory
;; (simd-kernels.ts and channel-kernels.ts explain why).
;; Every matrix is row-major [rows, c] float32 (rows = N·H·W, channels last); all pointers are byte
;; offsets into the backend's heap; c is a multiple of 4 for the SIMD functions. Sums are taken in
;; float32 over blocks of 64 rows and the block sums added into float64 totals, so a 16384-row
;; channel keeps float64-like accuracy without float64 work per element.
;;
;; scripts/build-wasm.mjs compiles this file into simd-kernels-wasm.ts twice: importing a shared
;; memory (the threaded-SIMD build of tfjs-backend-wasm) and a plain one (the single-thread build).
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; tot (float64, zeroed by the caller) += per-channel column sums of
  ;;   mode 0: a          mode 1: (a − mu)²          mode 2: b·(a − mu), and b into tot[c..2c)
  ;; acc: c float32 of scratch (2c in mode 2). rows ≥ 1.
  (func (export "reduce")
    (param $mode i32) (param $a i32) (param $b i32) (param $mu i32) (param $rows i32) (param $c i32)
    (param $acc i32) (param $tot i32)
    (local $cb i32) (local $m i32) (local $end i32) (local $j i32) (local $v v128) (local $w v128)
    (local $p i32) (local $accb i32)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (local.set $accb (select (i32.shl (local.get $cb) (i32.const 1)) (local.get $cb) (i32.eq (local.get $mode) (i32.const 2))))
    (block $done
      (loop $blocks
        (br_if $done (i32.ge_u (local.get $m) (local.get $rows)))
        (memory.fill (local.get $acc) (i32.const 0) (local.get $accb))
        (local.set $end (i32.add (local.get $m) (i32.const 64)))
        (if (i32.gt_u (local.get $end) (local.get $rows)) (then (local.set $end (local.get $rows))))
        (loop $row
          (local.set $j (i32.const 0))
          (loop $col
            (local.set $v (v128.load (i32.add (local.get $a) (local.get $j))))
            (if (local.get $mode)
              (then
                (local.set $v (f32x4.sub (local.get $v) (v128.load (i32.add (local.get $mu) (local.get $j)))))
                (if (i32.eq (local.get $mode) (i32.const 1))
                  (then (local.set $v (f32x4.mul (local.get $v) (local.get $v))))
                  (else
                    (local.set $w (v128.load (i32.add (local.get $b) (local.get $j))))
                    (local.set $v (f32x4.mul (local.get $v) (local.get $w)))
                    (local.set $p (i32.add (local.get $acc) (i32.add (local.get $cb) (local.get $j))))
                    (v128.store (local.get $p) (f32x4.add (v128.load (local.get $p)) (local.get $w)))))))
            (local.set $p (i32.add (local.get $acc) (local.get $j)))
            (v128.store (local.get $p) (f32x4.add (v128.load (local.get $p)) (local.get $v)))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br_if $col (i32.lt_u (local.get $j) (local.get $cb))))
          (local.set $a (i32.add (local.get $a) (local.get $cb)))
          (local.set $b (i32.add (local.get $b) (local.get $cb)))
          (local.set $m (i32.add (local.get $m) (i32.const 1)))
          (br_if $row (i32.lt_u (local.get $m) (local.get $end))))
        ;; tot += acc, widened to float64 two lanes at a time
        (local.set $j (i32.const 0))
        (loop $fold
          (local.set $v (v128.load (i32.add (local.get $acc) (local.get $j))))
          (local.set $p (i32.add (local.get $tot) (i32.shl (local.get $j) (i32.const 1))))
          (v128.store (local.get $p) (f64x2.add (v128.load (local.get $p)) (f64x2.promote_low_f32x4 (local.get $v))))
          (v128.store offset=16 (local.get $p)
            (f64x2.add (v128.load offset=16 (local.get $p))
              (f64x2.promote_low_f32x4
                (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v)))))
          (local.set $j (i32.add (local.get $j) (i32.const 16)))
          (br_if $fold (i32.lt_u (local.get $j) (local.get $accb))))
        (br $blocks))))

  ;; y = x·a + b per channel (a, b: c float32).
  (func (export "affine")
    (param $x i32) (param $a i32) (param $b i32) (param $y i32) (param $rows i32) (param $c i32)
    (local $cb i32) (local $m i32) (local $j i32)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (loop $row
      (local.set $j (i32.const 0))
      (loop $col
        (v128.store (i32.add (local.get $y) (local.get $j))
          (f32x4.add
            (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $j))) (v128.load (i32.add (local.get $a) (local.get $j))))
            (v128.load (i32.add (local.get $b) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br_if $col (i32.lt_u (local.get $j) (local.get $cb))))
      (local.set $x (i32.add (local.get $x) (local.get $cb)))
      (local.set $y (i32.add (local.get $y) (local.get $cb)))
      (local.set $m (i32.add (local.get $m) (i32.const 1)))
      (br_if $row (i32.lt_u (local.get $m) (local.get $rows)))))

  ;; BN input gradient dx = g·s − (x − mu)·k + c0 per channel (s, k, c0, mu: c float32).
  (func (export "bnDx")
    (param $g i32) (param $x i32) (param $mu i32) (param $s i32) (param $kc i32) (param $c0 i32)
    (param $dx i32) (param $rows i32) (param $c i32)
    (local $cb i32) (local $m i32) (local $j i32)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (loop $row
      (local.set $j (i32.const 0))
      (loop $col
        (v128.store (i32.add (local.get $dx) (local.get $j))
          (f32x4.add
            (f32x4.sub
              (f32x4.mul (v128.load (i32.add (local.get $g) (local.get $j))) (v128.load (i32.add (local.get $s) (local.get $j))))
              (f32x4.mul
                (f32x4.sub (v128.load (i32.add (local.get $x) (local.get $j))) (v128.load (i32.add (local.get $mu) (local.get $j))))
                (v128.load (i32.add (local.get $kc) (local.get $j)))))
            (v128.load (i32.add (local.get $c0) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br_if $col (i32.lt_u (local.get $j) (local.get $cb))))
      (local.set $g (i32.add (local.get $g) (local.get $cb)))
      (local.set $x (i32.add (local.get $x) (local.get $cb)))
      (local.set $dx (i32.add (local.get $dx) (local.get $cb)))
      (local.set $m (i32.add (local.get $m) (i32.const 1)))
      (br_if $row (i32.lt_u (local.get $m) (local.get $rows)))))

  ;; y = max(a (+ b), 0) over n elements (n % 4 == 0; b = 0: no addend) and the mask [y > 0]
  ;; bit-packed into words: element i is bit i % 32 of int32 word i / 32.
  (func (export "reluPack") (param $a i32) (param $b i32) (param $y i32) (param $words i32) (param $n i32)
    (local $i i32) (local $v v128) (local $word i32) (local $shift i32)
    (loop $chunk
      (local.set $v (v128.load (local.get $a)))
      (if (local.get $b) (then
        (local.set $v (f32x4.add (local.get $v) (v128.load (local.get $b))))
        (local.set $b (i32.add (local.get $b) (i32.const 16)))))
      (local.set $v (f32x4.max (local.get $v) (v128.const f32x4 0 0 0 0)))
      (v128.store (local.get $y) (local.get $v))
      (local.set $word (i32.or (local.get $word)
        (i32.shl (i32x4.bitmask (f32x4.gt (local.get $v) (v128.const f32x4 0 0 0 0))) (local.get $shift))))
      (local.set $shift (i32.add (local.get $shift) (i32.const 4)))
      (local.set $a (i32.add (local.get $a) (i32.const 16)))
      (local.set $y (i32.add (local.get $y) (i32.const 16)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (if (i32.or (i32.eq (local.get $shift) (i32.const 32)) (i32.ge_u (local.get $i) (local.get $n))) (then
        (i32.store (local.get $words) (local.get $word))
        (local.set $words (i32.add (local.get $words) (i32.const 4)))
        (local.set $word (i32.const 0))
        (local.set $shift (i32.const 0))))
      (br_if $chunk (i32.lt_u (local.get $i) (local.get $n)))))

  ;; dx = dy·mask for the packed mask (a multiply by 1.0 / 0.0, so −0 and NaN come out as tf's
  ;; dy·step(y) would give them), n % 4 == 0.
  (func (export "maskGrad") (param $dy i32) (param $words i32) (param $dx i32) (param $n i32)
    (local $i i32) (local $word i32) (local $lanes v128)
    (loop $chunk
      (if (i32.eqz (i32.and (local.get $i) (i32.const 31))) (then
        (local.set $word (i32.load (local.get $words)))
        (local.set $words (i32.add (local.get $words) (i32.const 4)))))
      (local.set $lanes (i32x4.ne
        (v128.and (i32x4.splat (local.get $word)) (v128.const i32x4 1 2 4 8))
        (v128.const i32x4 0 0 0 0)))
      (v128.store (local.get $dx)
        (f32x4.mul (v128.load (local.get $dy)) (v128.and (local.get $lanes) (v128.const f32x4 1 1 1 1))))
      (local.set $word (i32.shr_u (local.get $word) (i32.const 4)))
      (local.set $dy (i32.add (local.get $dy) (i32.const 16)))
      (local.set $dx (i32.add (local.get $dx) (i32.const 16)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br_if $chunk (i32.lt_u (local.get $i) (local.get $n)))))

  ;; Copies a [rows, bytes] block between row-strided matrices (strides in bytes): one channel
  ;; group out of an NHWC tensor (split) or into one (concat).
  (func (export "copyCols")
    (param $src i32) (param $srcStride i32) (param $dst i32) (param $dstStride i32) (param $rows i32)
    (param $bytes i32)
    (loop $row
      (memory.copy (local.get $dst) (local.get $src) (local.get $bytes))
      (local.set $src (i32.add (local.get $src) (local.get $srcStride)))
      (local.set $dst (i32.add (local.get $dst) (local.get $dstStride)))
      (local.set $rows (i32.sub (local.get $rows) (i32.const 1)))
      (br_if $row (local.get $rows))))

  ;; out[r, j] = x[r, idx[j]] for j < k: the listed channels of an NHWC tensor (k ≥ 1).
  (func (export "gatherIdx")
    (param $x i32) (param $idx i32) (param $out i32) (param $rows i32) (param $c i32) (param $k i32)
    (local $cb i32) (local $kb i32) (local $j i32)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (local.set $kb (i32.shl (local.get $k) (i32.const 2)))
    (loop $row
      (local.set $j (i32.const 0))
      (loop $col
        (f32.store (i32.add (local.get $out) (local.get $j))
          (f32.load (i32.add (local.get $x) (i32.shl (i32.load (i32.add (local.get $idx) (local.get $j))) (i32.const 2)))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br_if $col (i32.lt_u (local.get $j) (local.get $kb))))
      (local.set $x (i32.add (local.get $x) (local.get $cb)))
      (local.set $out (i32.add (local.get $out) (local.get $kb)))
      (local.set $rows (i32.sub (local.get $rows) (i32.const 1)))
      (br_if $row (local.get $rows))))

  ;; MECTA's pruned backward, pass 1, row by row: tot[0..c) += Σ g over every channel (SIMD) and
  ;; tot[c..c+k) += Σ g[r, idx[j]]·(x[r, j] − mu[j]) over the k cached channels, x holding only
  ;; those (float64 totals zeroed by the caller; acc: c + k float32 of scratch). One read of g and
  ;; of the compact cache, where EATA's pass reads g and the whole input.
  (func (export "sumsIdx")
    (param $g i32) (param $x i32) (param $mu i32) (param $idx i32) (param $rows i32) (param $c i32)
    (param $k i32) (param $acc i32) (param $tot i32)
    (local $cb i32) (local $kb i32) (local $m i32) (local $end i32) (local $j i32) (local $p i32)
    (local $v v128)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (local.set $kb (i32.shl (local.get $k) (i32.const 2)))
    (block $done
      (loop $blocks
        (br_if $done (i32.ge_u (local.get $m) (local.get $rows)))
        (memory.fill (local.get $acc) (i32.const 0) (i32.add (local.get $cb) (local.get $kb)))
        (local.set $end (i32.add (local.get $m) (i32.const 64)))
        (if (i32.gt_u (local.get $end) (local.get $rows)) (then (local.set $end (local.get $rows))))
        (loop $row
          (local.set $j (i32.const 0))
          (loop $col
            (local.set $p (i32.add (local.get $acc) (local.get $j)))
            (v128.store (local.get $p) (f32x4.add (v128.load (local.get $p)) (v128.load (i32.add (local.get $g) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br_if $col (i32.lt_u (local.get $j) (local.get $cb))))
          (local.set $j (i32.const 0))
          (loop $kept
            (local.set $p (i32.add (i32.add (local.get $acc) (local.get $cb)) (local.get $j)))
            (f32.store (local.get $p)
              (f32.add (f32.load (local.get $p))
                (f32.mul
                  (f32.load (i32.add (local.get $g)
                    (i32.shl (i32.load (i32.add (local.get $idx) (local.get $j))) (i32.const 2))))
                  (f32.sub (f32.load (i32.add (local.get $x) (local.get $j)))
                    (f32.load (i32.add (local.get $mu) (local.get $j)))))))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br_if $kept (i32.lt_u (local.get $j) (local.get $kb))))
          (local.set $g (i32.add (local.get $g) (local.get $cb)))
          (local.set $x (i32.add (local.get $x) (local.get $kb)))
          (local.set $m (i32.add (local.get $m) (i32.const 1)))
          (br_if $row (i32.lt_u (local.get $m) (local.get $end))))
        (local.set $j (i32.const 0))
        (loop $fold
          (local.set $v (v128.load (i32.add (local.get $acc) (local.get $j))))
          (local.set $p (i32.add (local.get $tot) (i32.shl (local.get $j) (i32.const 1))))
          (v128.store (local.get $p) (f64x2.add (v128.load (local.get $p)) (f64x2.promote_low_f32x4 (local.get $v))))
          (v128.store offset=16 (local.get $p)
            (f64x2.add (v128.load offset=16 (local.get $p))
              (f64x2.promote_low_f32x4
                (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v)))))
          (local.set $j (i32.add (local.get $j) (i32.const 16)))
          (br_if $fold (i32.lt_u (local.get $j) (local.get $cb))))
        (local.set $j (i32.const 0))
        (loop $foldk
          (local.set $p (i32.add (local.get $tot) (i32.shl (i32.add (local.get $cb) (local.get $j)) (i32.const 1))))
          (f64.store (local.get $p)
            (f64.add (f64.load (local.get $p))
              (f64.promote_f32 (f32.load (i32.add (i32.add (local.get $acc) (local.get $cb)) (local.get $j))))))
          (local.set $j (i32.add (local.get $j) (i32.const 4)))
          (br_if $foldk (i32.lt_u (local.get $j) (local.get $kb))))
        (br $blocks))))

  ;; MECTA's pruned backward, pass 2, row by row: dx = g·s + c0 (SIMD), then for the k cached
  ;; channels dx[r, idx[j]] −= (x[r, j] − mu[j])·kc[j] while the row is in cache.
  (func (export "dxIdx")
    (param $g i32) (param $x i32) (param $mu i32) (param $idx i32) (param $s i32) (param $kc i32)
    (param $c0 i32) (param $dx i32) (param $rows i32) (param $c i32) (param $k i32)
    (local $cb i32) (local $kb i32) (local $m i32) (local $j i32) (local $p i32)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (local.set $kb (i32.shl (local.get $k) (i32.const 2)))
    (loop $row
      (local.set $j (i32.const 0))
      (loop $col
        (v128.store (i32.add (local.get $dx) (local.get $j))
          (f32x4.add
            (f32x4.mul (v128.load (i32.add (local.get $g) (local.get $j))) (v128.load (i32.add (local.get $s) (local.get $j))))
            (v128.load (i32.add (local.get $c0) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br_if $col (i32.lt_u (local.get $j) (local.get $cb))))
      (local.set $j (i32.const 0))
      (loop $kept
        (local.set $p (i32.add (local.get $dx) (i32.shl (i32.load (i32.add (local.get $idx) (local.get $j))) (i32.const 2))))
        (f32.store (local.get $p)
          (f32.sub (f32.load (local.get $p))
            (f32.mul
              (f32.sub (f32.load (i32.add (local.get $x) (local.get $j))) (f32.load (i32.add (local.get $mu) (local.get $j))))
              (f32.load (i32.add (local.get $kc) (local.get $j))))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br_if $kept (i32.lt_u (local.get $j) (local.get $kb))))
      (local.set $g (i32.add (local.get $g) (local.get $cb)))
      (local.set $x (i32.add (local.get $x) (local.get $kb)))
      (local.set $dx (i32.add (local.get $dx) (local.get $cb)))
      (local.set $m (i32.add (local.get $m) (i32.const 1)))
      (br_if $row (i32.lt_u (local.get $m) (local.get $rows)))))

  ;; MECTA's caching forward in one pass: y = x·a + b (SIMD) and xk[r, j] = x[r, idx[j]], the
  ;; k channels its pruned cache keeps.
  (func (export "affineGather")
    (param $x i32) (param $a i32) (param $b i32) (param $y i32) (param $idx i32) (param $xk i32)
    (param $rows i32) (param $c i32) (param $k i32)
    (local $cb i32) (local $kb i32) (local $m i32) (local $j i32)
    (local.set $cb (i32.shl (local.get $c) (i32.const 2)))
    (local.set $kb (i32.shl (local.get $k) (i32.const 2)))
    (loop $row
      (local.set $j (i32.const 0))
      (loop $col
        (v128.store (i32.add (local.get $y) (local.get $j))
          (f32x4.add
            (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $j))) (v128.load (i32.add (local.get $a) (local.get $j))))
            (v128.load (i32.add (local.get $b) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br_if $col (i32.lt_u (local.get $j) (local.get $cb))))
      (local.set $j (i32.const 0))
      (loop $kept
        (f32.store (i32.add (local.get $xk) (local.get $j))
          (f32.load (i32.add (local.get $x) (i32.shl (i32.load (i32.add (local.get $idx) (local.get $j))) (i32.const 2)))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br_if $kept (i32.lt_u (local.get $j) (local.get $kb))))
      (local.set $x (i32.add (local.get $x) (local.get $cb)))
      (local.set $y (i32.add (local.get $y) (local.get $cb)))
      (local.set $xk (i32.add (local.get $xk) (local.get $kb)))
      (local.set $m (i32.add (local.get $m) (i32.const 1)))
      (br_if $row (i32.lt_u (local.get $m) (local.get $rows)))))
)
