# frozen_string_literal: true

require "vagrant"

module VagrantPlugins
  module Ctd
    # config.vm.provider :ctd do |ctd| ... end
    class Config < Vagrant.plugin("2", :config)
      # where ctd is: the local socket (default CTD_SOCKET or /run/ctd/ctd.sock) or a remote
      attr_accessor :socket, :remote, :token, :fingerprint
      # the instance
      attr_accessor :name, :type, :template, :memory, :cpus, :diskspace, :features, :privileged
      # the network: a ctd network (made by the plugin when network_subnet is given and it is
      # missing; deleted again at destroy if the plugin made it and nothing else uses it)
      attr_accessor :network, :network_subnet, :network_nat

      def initialize
        super
        @socket = @remote = @token = @fingerprint = UNSET_VALUE
        @name = @type = @template = @memory = @cpus = @diskspace = @features = @privileged = UNSET_VALUE
        @network = @network_subnet = @network_nat = UNSET_VALUE
      end

      def finalize!
        @socket = nil if @socket == UNSET_VALUE
        @remote = nil if @remote == UNSET_VALUE
        @token = nil if @token == UNSET_VALUE
        @fingerprint = nil if @fingerprint == UNSET_VALUE
        @name = nil if @name == UNSET_VALUE
        @type = "container" if @type == UNSET_VALUE
        @template = nil if @template == UNSET_VALUE
        @memory = nil if @memory == UNSET_VALUE
        @cpus = nil if @cpus == UNSET_VALUE
        @diskspace = nil if @diskspace == UNSET_VALUE
        @features = [] if @features == UNSET_VALUE
        @privileged = false if @privileged == UNSET_VALUE
        @network = nil if @network == UNSET_VALUE
        @network_subnet = nil if @network_subnet == UNSET_VALUE
        @network_nat = false if @network_nat == UNSET_VALUE
        @type = @type.to_s
        @features = @features.split(",").map(&:strip) if @features.is_a?(String)
      end

      def validate(machine)
        errors = _detected_errors
        errors << "ctd.type must be \"container\" or \"vm\", not #{@type.inspect}" unless %w[container vm].include?(@type)
        errors << "ctd.remote needs ctd.token" if @remote && !@token
        errors << "ctd.remote must be an https:// URL" if @remote && !@remote.to_s.start_with?("https://")
        errors << "ctd.cpus must be a whole number" if @cpus && !@cpus.to_s.match?(/\A\d+\z/)
        errors << "ctd.memory must be a size like 1024 (MiB) or \"1G\"" if @memory && !@memory.to_s.match?(/\A\d+[KMGT]?\z/i)
        errors << "ctd.diskspace must be a size like \"10G\"" if @diskspace && !@diskspace.to_s.match?(/\A\d+[KMGT]?\z/i)
        errors << "ctd.features must be a list of names" unless @features.is_a?(Array) && @features.all? { |f| f.is_a?(String) }
        if @type == "vm"  # container-only settings: say so before anything is made
          errors << "ctd.features are container features; a VM (ctd.type = \"vm\") has none" unless @features.empty?
          errors << "ctd.privileged is for containers; a VM is isolated by QEMU" if @privileged
        end
        errors.concat(forward_errors(machine))
        if !@template && !machine.config.vm.box
          errors << "set config.vm.box (a box for provider ctd) or ctd.template (a ctd template)"
        end
        { "ctd provider" => errors }
      end

      # forwarded_port entries ctd cannot make, said before anything is made (Vagrant's own ssh
      # forward, id "ssh", is not made at all: Vagrant reaches the instance at its address)
      def forward_errors(machine)
        machine.config.vm.networks.filter_map do |type, o|
          next unless type == :forwarded_port && o[:id] != "ssh"
          where = "forwarded_port #{o[:host]} => #{o[:guest]}"
          if !%w[tcp udp].include?(o[:protocol].to_s)
            "#{where}: protocol must be tcp or udp"
          elsif o[:host_ip].to_s.start_with?("127.")
            "#{where}: ctd's forwards are DNAT rules, which loopback (#{o[:host_ip]}) does not reach; " \
              "leave host_ip out (every address of the host) or give one of the host's other addresses"
          end
        end
      end

      # ctd's size syntax: a bare number in the Vagrantfile means MiB, as other providers read it.
      def memory_limit
        return nil if @memory.nil?
        @memory.to_s.match?(/\A\d+\z/) ? "#{@memory}M" : @memory.to_s.upcase
      end
    end
  end
end
