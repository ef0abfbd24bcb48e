# frozen_string_literal: true

require_relative "lib/vagrant-ctd/version"

Gem::Specification.new do |s|
  s.name = "vagrant-ctd"
  s.version = VagrantPlugins::Ctd::VERSION
  s.summary = "Vagrant provider for ctd system containers and VMs"
  s.description = "vagrant up --provider=ctd: a ctd container (or VM) as the dev box, through ctd's REST API."
  s.authors = ["ctd developers"]
  s.license = "MIT"
  s.files = Dir["lib/**/*.rb"] + ["README.md"]
  s.require_paths = ["lib"]
  s.required_ruby_version = ">= 2.7"
  # no runtime dependency: Vagrant itself provides everything (Ruby's stdlib for the rest)
end
