/**
 * The k highest-scoring labels of a stream, in O(n log k): a min-heap whose root is
 * the worst score kept, so most of a long scan is one comparison per item.
 */
export class TopK {
  private readonly scores: Float64Array;
  private readonly labels: Int32Array;
  private size = 0;

  constructor(readonly k: number) {
    this.scores = new Float64Array(k);
    this.labels = new Int32Array(k);
  }

  /** The score an item must beat to enter (-Infinity until full). */
  get threshold(): number {
    return this.size < this.k ? -Infinity : this.scores[0]!;
  }

  push(score: number, label: number): void {
    if (this.size < this.k) {
      let i = this.size++;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (this.scores[parent]! <= score) break;
        this.scores[i] = this.scores[parent]!;
        this.labels[i] = this.labels[parent]!;
        i = parent;
      }
      this.scores[i] = score;
      this.labels[i] = label;
      return;
    }
    if (score <= this.scores[0]!) return;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= this.size) break;
      const right = left + 1;
      const child = right < this.size && this.scores[right]! < this.scores[left]! ? right : left;
      if (this.scores[child]! >= score) break;
      this.scores[i] = this.scores[child]!;
      this.labels[i] = this.labels[child]!;
      i = child;
    }
    this.scores[i] = score;
    this.labels[i] = label;
  }

  /** Everything kept, best first. */
  sorted(): { label: number; score: number }[] {
    const out = Array.from({ length: this.size }, (_, i) => ({ label: this.labels[i]!, score: this.scores[i]! }));
    return out.sort((a, b) => b.score - a.score || a.label - b.label);
  }
}
