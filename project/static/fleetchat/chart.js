// A small canvas line chart for the dashboard's last five minutes, one point per second.
//
// Its size is measured only when the window resizes (measure()): reading it on every draw, right
// after the page changed a hundred cards, would force the browser to lay the page out then and
// there, which cost more than everything else an update does.

export class LineChart {
  constructor(canvas, series, { capacity = 300, max = null } = {}) {
    this.canvas = canvas;
    this.series = series; // [{key, label, color}]
    this.capacity = capacity;
    this.fixedMax = max;
    this.points = []; // [{key: value}]
    this.measure();
  }

  measure() {
    this.width = this.canvas.clientWidth;
    this.height = this.canvas.clientHeight;
  }

  push(values) {
    this.points.push(values);
    if (this.points.length > this.capacity) this.points.shift();
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this;
    if (this.canvas.width !== width * ratio) this.canvas.width = width * ratio;
    if (this.canvas.height !== height * ratio) this.canvas.height = height * ratio;
    const context = this.canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);

    const max = this.fixedMax ?? Math.max(1, ...this.points.flatMap((point) => this.series.map((s) => point[s.key] || 0)));
    const x = (index) => width - ((this.points.length - 1 - index) / (this.capacity - 1)) * width;
    const y = (value) => height - 4 - (value / max) * (height - 8);

    context.strokeStyle = "rgba(127,127,127,0.25)";
    context.lineWidth = 1;
    for (const fraction of [0, 0.5, 1]) {
      context.beginPath();
      context.moveTo(0, y(max * fraction));
      context.lineTo(width, y(max * fraction));
      context.stroke();
    }
    for (const { key, color } of this.series) {
      context.strokeStyle = color;
      context.lineWidth = 2;
      context.beginPath();
      this.points.forEach((point, index) => {
        const method = index === 0 ? "moveTo" : "lineTo";
        context[method](x(index), y(point[key] || 0));
      });
      context.stroke();
    }
  }
}
