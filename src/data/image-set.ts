/** A labelled set of images in memory: uint8, NHWC (n·height·width·channels bytes). */
export interface ImageSet {
  images: Uint8Array;
  labels: Int32Array;
  n: number;
  height: number;
  width: number;
  channels: number;
}
