/** A tensor as read from a weight file, before it becomes a tf.Tensor. Shapes are PyTorch's (NCHW/OIHW). */
export type RawDType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export interface RawTensor {
  /** dtype in the file; floating data is always delivered as Float32Array in `data`. */
  dtype: RawDType;
  shape: number[];
  /** float types → Float32Array; integer/bool types → Float64Array (values exact up to 2^53). */
  data: Float32Array | Float64Array;
}

/** PyTorch state_dict: key → tensor, in file order. */
export type StateDict = Map<string, RawTensor>;
