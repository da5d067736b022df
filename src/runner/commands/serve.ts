export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('captrap serve: not implemented yet\n');
  return 1;
}
