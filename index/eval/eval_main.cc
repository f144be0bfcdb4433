// wavekv-eval: the accuracy harness as a standalone tool (same as
// `wavekv eval`; see eval_cli.h for the flags).
#include <iostream>
#include <string>
#include <vector>

#include "index/eval/eval_cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return wavekv::eval::RunEvalCommand(args, std::cout, std::cerr);
}
